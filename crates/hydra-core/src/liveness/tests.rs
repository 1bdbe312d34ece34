//! Table and property tests of the mesh's verdicts, and of how a mark and a later heartbeat
//! change a node's status.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;
use crate::node::{Roles, UnixMillis};

const NOW: UnixMillis = 1_000_000;
const TIMEOUT: i64 = 60_000;

/// `signal node answered` where node is `none`, `hb=<age>` with an optional `mark=<age>`
/// (ages in ms before now), and answered is `yes`, `no` or `-` (not asked).
fn check(cases: &[&str], expected: Expect) {
    let mut out = String::new();
    for case in cases {
        let words: Vec<&str> = case.split_whitespace().collect();
        let signal = match words[0] {
            "down" => MeshSignal::Down,
            "up" => MeshSignal::Up,
            other => panic!("signal {other}"),
        };
        let mut node = Node::new("w1", Roles::default());
        let mut known = true;
        for word in &words[1..words.len() - 1] {
            match word.split_once('=') {
                None if *word == "none" => known = false,
                None if *word == "silent" => {}
                Some(("hb", age)) => node.last_heartbeat = Some(NOW - age.parse::<i64>().unwrap()),
                Some(("mark", age)) => {
                    node.unreachable_since = Some(NOW - age.parse::<i64>().unwrap());
                }
                _ => panic!("word {word}"),
            }
        }
        let answered = match words[words.len() - 1] {
            "yes" => Some(true),
            "no" => Some(false),
            "-" => None,
            other => panic!("answered {other}"),
        };
        let verdict = mesh_verdict(signal, known.then_some(&node), answered, NOW, TIMEOUT);
        out.push_str(&format!("{case:<32} => {verdict}\n"));
    }
    expected.assert_eq(&out);
}

#[test]
fn down_marks_a_live_node_unless_its_agent_answers() {
    check(
        &[
            "down hb=1000 -",
            "down hb=1000 no",
            "down hb=1000 yes",
            "down none -",
            "down silent -",
            "down hb=61000 no",
            "down hb=3000 mark=1000 no",
            "down hb=500 mark=1000 no",
            "down hb=1000 mark=1000 -",
        ],
        expect![[r#"
            down hb=1000 -                   => mark_unreachable
            down hb=1000 no                  => mark_unreachable
            down hb=1000 yes                 => keep agent_answers
            down none -                      => keep not_enrolled
            down silent -                    => keep already_offline
            down hb=61000 no                 => keep already_offline
            down hb=3000 mark=1000 no        => keep already_marked
            down hb=500 mark=1000 no         => mark_unreachable
            down hb=1000 mark=1000 -         => keep already_marked
        "#]],
    );
}

#[test]
fn up_never_makes_a_node_eligible_only_a_heartbeat_does() {
    check(
        &[
            "up hb=1000 -",
            "up hb=3000 mark=1000 yes",
            "up silent -",
            "up none -",
        ],
        expect![[r#"
            up hb=1000 -                     => keep back_at_next_heartbeat
            up hb=3000 mark=1000 yes         => keep back_at_next_heartbeat
            up silent -                      => keep back_at_next_heartbeat
            up none -                        => keep not_enrolled
        "#]],
    );
}

#[test]
fn a_mark_holds_until_a_newer_heartbeat() {
    let mut node = Node::new("w1", Roles::default());
    node.last_heartbeat = Some(NOW - 2_000);
    assert_eq!(node.status(NOW, TIMEOUT), NodeStatus::Online);
    node.unreachable_since = Some(NOW - 1_000);
    assert_eq!(node.status(NOW, TIMEOUT), NodeStatus::Unreachable);
    assert_eq!(node.counted_heartbeat(), None);
    node.last_heartbeat = Some(NOW - 500);
    assert_eq!(node.status(NOW, TIMEOUT), NodeStatus::Online);
    assert_eq!(node.counted_heartbeat(), Some(NOW - 500));
    node.last_heartbeat = Some(NOW - TIMEOUT);
    assert_eq!(node.status(NOW, TIMEOUT), NodeStatus::Offline);
}

proptest! {
    /// Written from the policy, not from `status`: a node is marked exactly when the mesh
    /// says down, it is enrolled, its last heartbeat is within the timeout and newer than any
    /// mark, and its agent did not answer; and after a mark it is never online until a newer
    /// heartbeat.
    #[test]
    fn the_verdict_follows_the_policy(
        down in any::<bool>(),
        enrolled in any::<bool>(),
        heartbeat_age in proptest::option::of(0i64..120_000),
        mark_age in proptest::option::of(0i64..120_000),
        answered in proptest::option::of(any::<bool>()),
    ) {
        let mut node = Node::new("w1", Roles::default());
        node.last_heartbeat = heartbeat_age.map(|age| NOW - age);
        node.unreachable_since = mark_age.map(|age| NOW - age);
        let signal = if down { MeshSignal::Down } else { MeshSignal::Up };
        let verdict = mesh_verdict(signal, enrolled.then_some(&node), answered, NOW, TIMEOUT);
        let fresh = heartbeat_age.is_some_and(|age| age < TIMEOUT);
        let newer_than_mark = match (heartbeat_age, mark_age) {
            (Some(heartbeat), Some(mark)) => heartbeat < mark,
            _ => true,
        };
        let marks = down && enrolled && fresh && newer_than_mark && answered != Some(true);
        prop_assert_eq!(marks, matches!(verdict, MeshVerdict::MarkUnreachable { since: NOW }));
        if let MeshVerdict::MarkUnreachable { since } = verdict {
            node.unreachable_since = Some(since);
            prop_assert_ne!(node.status(NOW, TIMEOUT), NodeStatus::Online);
            prop_assert_eq!(node.counted_heartbeat(), None);
            node.last_heartbeat = Some(NOW + 1);
            prop_assert_eq!(node.status(NOW + 1, TIMEOUT), NodeStatus::Online);
        }
    }
}

#[test]
fn only_an_enrolled_address_speaks_for_a_node() {
    let mut node = Node::new("w1", Roles::default());
    node.lan_ip = Some("10.0.0.5".parse().unwrap());
    node.wg_ip = Some("fd00::5".parse().unwrap());
    let mut bare = Node::new("w2", Roles::default());
    bare.lan_ip = None;
    let mut out = String::new();
    for member in ["10.0.0.5", "fd00::5", "10.0.0.6", "127.0.0.1"] {
        let ip: IpAddr = member.parse().unwrap();
        out.push_str(&format!(
            "member {member:<10} w1 {} w2 {}\n",
            member_matches_node(ip, &node),
            member_matches_node(ip, &bare)
        ));
    }
    for (reported, published) in [
        (Some("http://10.9.9.9:7070"), Some("http://10.0.0.6:7070")),
        (None, Some("http://10.0.0.5:7070/x")),
        (None, Some("https://[fd00::5]:7070")),
        (None, Some("http://10.0.0.6:7070")),
        (None, Some("http://10.0.0.6@10.0.0.5:7070")),
        (None, Some("http://agent.example:7070")),
        (None, Some("ftp://10.0.0.5")),
        (None, None),
    ] {
        out.push_str(&format!(
            "reported {reported:?} published {published:?} -> {:?}\n",
            agent_check_url(reported, published, &node)
        ));
    }
    expect![[r#"
        member 10.0.0.5   w1 true w2 false
        member fd00::5    w1 true w2 false
        member 10.0.0.6   w1 false w2 false
        member 127.0.0.1  w1 false w2 false
        reported Some("http://10.9.9.9:7070") published Some("http://10.0.0.6:7070") -> Some("http://10.9.9.9:7070")
        reported None published Some("http://10.0.0.5:7070/x") -> Some("http://10.0.0.5:7070/x")
        reported None published Some("https://[fd00::5]:7070") -> Some("https://[fd00::5]:7070")
        reported None published Some("http://10.0.0.6:7070") -> None
        reported None published Some("http://10.0.0.6@10.0.0.5:7070") -> None
        reported None published Some("http://agent.example:7070") -> None
        reported None published Some("ftp://10.0.0.5") -> None
        reported None published None -> None
    "#]].assert_eq(&out);
}

#[test]
fn an_agent_forwards_only_to_the_address_the_mesh_hears_a_member_from() {
    let mut out = String::new();
    for (api_url, member) in [
        ("http://198.18.1.10:7070", "198.18.1.10"),
        ("https://198.18.1.10:7070/", "198.18.1.10"),
        ("http://198.18.1.66:7070", "198.18.1.10"),
        ("http://[fd00::5]:7070", "fd00::5"),
        ("http://[::ffff:198.18.1.10]:7070", "198.18.1.10"),
        ("http://198.18.1.10:7070", "::ffff:198.18.1.10"),
        ("http://198.18.1.66@198.18.1.10:7070", "198.18.1.10"),
        ("http://worker.example:7070", "198.18.1.10"),
        ("http://0.0.0.0:7070", "198.18.1.10"),
        ("ftp://198.18.1.10", "198.18.1.10"),
        ("", "198.18.1.10"),
    ] {
        let ip: IpAddr = member.parse().unwrap();
        out.push_str(&format!(
            "{api_url:<36} from {member:<20} -> {}\n",
            api_url_heard_from(api_url, ip)
        ));
    }
    expect![[r#"
        http://198.18.1.10:7070              from 198.18.1.10          -> true
        https://198.18.1.10:7070/            from 198.18.1.10          -> true
        http://198.18.1.66:7070              from 198.18.1.10          -> false
        http://[fd00::5]:7070                from fd00::5              -> true
        http://[::ffff:198.18.1.10]:7070     from 198.18.1.10          -> true
        http://198.18.1.10:7070              from ::ffff:198.18.1.10   -> true
        http://198.18.1.66@198.18.1.10:7070  from 198.18.1.10          -> false
        http://worker.example:7070           from 198.18.1.10          -> false
        http://0.0.0.0:7070                  from 198.18.1.10          -> false
        ftp://198.18.1.10                    from 198.18.1.10          -> false
                                             from 198.18.1.10          -> false
    "#]]
    .assert_eq(&out);
}

proptest! {
    /// A forward goes to a member's gossiped URL exactly when its host is the member's mesh
    /// address, whatever the port and path.
    #[test]
    fn a_gossiped_url_is_trusted_only_at_the_mesh_address(
        host in any::<[u8; 4]>(),
        member in any::<[u8; 4]>(),
        port in 1u16..,
        path in "(/[a-z]{0,8}){0,2}",
    ) {
        let host = std::net::Ipv4Addr::from(host);
        let member = IpAddr::from(member);
        let url = format!("http://{host}:{port}{path}");
        prop_assert_eq!(api_url_heard_from(&url, member), IpAddr::from(host) == member);
    }
}
