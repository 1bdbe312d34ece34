//! Table and property tests of the report trust rules.

use std::net::IpAddr;

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

fn check_hosts(cases: &[(&str, &[&str], &[&str])], expected: Expect) {
    let mut out = String::new();
    for (host, enrolled, allowlist) in cases {
        let enrolled: Vec<IpAddr> = enrolled.iter().map(|ip| ip.parse().unwrap()).collect();
        let allowlist: Vec<String> = allowlist.iter().map(|entry| (*entry).to_owned()).collect();
        let verdict = if agent_host_allowed(host, &enrolled, &allowlist) {
            "allowed"
        } else {
            "refused"
        };
        out.push_str(&format!(
            "{host} enrolled {enrolled:?} allow {allowlist:?}: {verdict}\n"
        ));
    }
    expected.assert_eq(&out);
}

#[test]
fn agent_hosts_must_be_enrolled_addresses_or_allowed() {
    check_hosts(
        &[
            ("10.1.0.5", &["10.1.0.5", "10.99.0.5"], &[]),
            ("10.99.0.5", &["10.1.0.5", "10.99.0.5"], &[]),
            ("10.1.0.6", &["10.1.0.5"], &[]),
            ("127.0.0.1", &[], &[]),
            ("127.0.0.1", &[], &["127.0.0.1"]),
            ("::1", &[], &["0:0:0:0:0:0:0:1"]),
            ("fd00::5", &["fd00::5"], &[]),
            ("worker-1.example", &["10.1.0.5"], &[]),
            ("Worker-1.Example", &[], &["worker-1.example"]),
            ("169.254.169.254", &["10.1.0.5"], &["worker-1.example"]),
        ],
        expect![[r#"
            10.1.0.5 enrolled [10.1.0.5, 10.99.0.5] allow []: allowed
            10.99.0.5 enrolled [10.1.0.5, 10.99.0.5] allow []: allowed
            10.1.0.6 enrolled [10.1.0.5] allow []: refused
            127.0.0.1 enrolled [] allow []: refused
            127.0.0.1 enrolled [] allow ["127.0.0.1"]: allowed
            ::1 enrolled [] allow ["0:0:0:0:0:0:0:1"]: allowed
            fd00::5 enrolled [fd00::5] allow []: allowed
            worker-1.example enrolled [10.1.0.5] allow []: refused
            Worker-1.Example enrolled [] allow ["worker-1.example"]: allowed
            169.254.169.254 enrolled [10.1.0.5] allow ["worker-1.example"]: refused
        "#]],
    );
}

#[test]
fn capacity_is_clamped_to_the_cap() {
    let cases = [
        (0, 64),
        (15, 64),
        (64, 64),
        (65, 64),
        (u32::MAX, 64),
        (10, 0),
    ];
    let out: Vec<String> = cases
        .iter()
        .map(|&(reported, cap)| {
            format!(
                "{reported}/{cap} -> {:?}",
                capped_max_sessions(reported, cap)
            )
        })
        .collect();
    expect![[r#"
        [
            "0/64 -> (0, false)",
            "15/64 -> (15, false)",
            "64/64 -> (64, false)",
            "65/64 -> (64, true)",
            "4294967295/64 -> (64, true)",
            "10/0 -> (0, true)",
        ]
    "#]]
    .assert_debug_eq(&out);
}

proptest! {
    #[test]
    fn the_capacity_used_never_exceeds_the_cap_nor_the_report(reported in any::<u32>(), cap in any::<u32>()) {
        let (used, clamped) = capped_max_sessions(reported, cap);
        prop_assert!(used <= cap && used <= reported);
        prop_assert_eq!(clamped, used != reported);
    }

    #[test]
    fn an_address_neither_enrolled_nor_allowed_is_refused(a in any::<[u8; 4]>(), b in any::<[u8; 4]>()) {
        let host = IpAddr::from(a);
        let other = IpAddr::from(b);
        prop_assume!(host != other);
        prop_assert!(!agent_host_allowed(&host.to_string(), &[other], &[other.to_string()]));
        prop_assert!(agent_host_allowed(&host.to_string(), &[host], &[]));
    }
}
