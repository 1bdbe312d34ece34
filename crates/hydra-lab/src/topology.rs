//! The lab's hosts and links: network namespaces joined by veth pairs to bridges, addresses,
//! nftables drop rules, and processes started inside a host. Everything it made is removed when
//! it is dropped, even when a test fails.
//!
//! It must run inside a network namespace of its own (see [`crate::isolate`]): bridges live in
//! that namespace and `/run/netns` is a private tmpfs, so nothing it does is visible outside.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::LabProcess;

/// A host of the lab: one network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    name: String,
}

impl Host {
    /// The namespace name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A layer-2 network of the lab (a bridge in the lab's own namespace), e.g. a venue LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    bridge: String,
    prefix_len: u8,
}

/// The lab: owns its namespaces, bridges and processes, and removes them on drop.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
    bin_dir: PathBuf,
    hosts: Vec<String>,
    bridges: Vec<String>,
    veth_count: usize,
}

/// Runs a command to completion within `limit`; fails naming it with its stderr. Output goes
/// to anonymous files, not pipes, so a chatty command cannot block on a full pipe.
pub(crate) fn run_bounded(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> anyhow::Result<String> {
    let mut stdout = tempfile::tempfile().context("creating an output file")?;
    let mut stderr = tempfile::tempfile().context("creating an output file")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {program} {}", args.join(" ")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{program} {} did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |file: &mut std::fs::File| -> anyhow::Result<String> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)?;
        Ok(text)
    };
    if !status.success() {
        bail!(
            "{program} {} failed ({status}): {}",
            args.join(" "),
            read(&mut stderr)?.trim()
        );
    }
    read(&mut stdout)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_bounded("ip", args, None, Duration::from_secs(10))
}

impl Lab {
    /// A lab writing its logs under `dir`, finding stand-in binaries in `bin_dir`. Call only
    /// inside the lab's own namespaces (from [`crate::isolate::run_isolated`]).
    pub fn new(dir: &Path, bin_dir: &Path) -> anyhow::Result<Lab> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Lab {
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            hosts: Vec::new(),
            bridges: Vec::new(),
            veth_count: 0,
        })
    }

    /// Where process logs and data directories go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a binary built next to the test (`hydra-lab-stream-server`, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A new host (network namespace) with loopback up.
    pub fn host(&mut self, name: &str) -> anyhow::Result<Host> {
        ip(&["netns", "add", name]).with_context(|| format!("creating host {name}"))?;
        self.hosts.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(Host {
            name: name.to_owned(),
        })
    }

    /// A new network (bridge) whose addresses use `prefix_len`.
    pub fn network(&mut self, bridge: &str, prefix_len: u8) -> anyhow::Result<Network> {
        ip(&["link", "add", bridge, "type", "bridge"])
            .with_context(|| format!("creating network {bridge}"))?;
        self.bridges.push(bridge.to_owned());
        ip(&["link", "set", bridge, "up"])?;
        Ok(Network {
            bridge: bridge.to_owned(),
            prefix_len,
        })
    }

    /// Plugs `host` into `network` as interface `ifname` with `address`.
    pub fn attach(
        &mut self,
        host: &Host,
        network: &Network,
        ifname: &str,
        address: Ipv4Addr,
    ) -> anyhow::Result<()> {
        self.veth_count += 1;
        let outer = format!("veth{}", self.veth_count);
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", ifname, "netns", &host.name,
        ])
        .with_context(|| format!("linking {} to {}", host.name, network.bridge))?;
        ip(&["link", "set", &outer, "master", &network.bridge, "up"])?;
        let cidr = format!("{address}/{}", network.prefix_len);
        ip(&["-n", &host.name, "addr", "add", &cidr, "dev", ifname])?;
        ip(&["-n", &host.name, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Gives the lab's own namespace (where the test code runs) `address` on `network`.
    pub fn attach_self(&mut self, network: &Network, address: Ipv4Addr) -> anyhow::Result<()> {
        let cidr = format!("{address}/{}", network.prefix_len);
        ip(&["addr", "add", &cidr, "dev", &network.bridge])?;
        Ok(())
    }

    /// Starts `program args` on `host`; the returned process is killed when dropped.
    pub fn spawn(
        &self,
        host: &Host,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<LabProcess> {
        LabProcess::spawn(&self.dir, &host.name, name, program, args, &[])
    }

    /// Drops TCP to `port` arriving on `host` from any of `sources` (a firewall drop: the
    /// sender's connect times out). Replaces any earlier drops on that host.
    pub fn drop_tcp_from(
        &self,
        host: &Host,
        sources: &[Ipv4Addr],
        port: u16,
    ) -> anyhow::Result<()> {
        let sources: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
        let script = format!(
            "table inet hydra_lab {{}}\n\
             flush table inet hydra_lab\n\
             table inet hydra_lab {{\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 ip saddr {{ {} }} tcp dport {port} drop\n\
               }}\n\
             }}\n",
            sources.join(", ")
        );
        nft(host, &["-f", "-"], Some(&script))
            .with_context(|| format!("installing drop rules on {}", host.name))
            .map(drop)
    }

    /// Removes the drops set by [`drop_tcp_from`](Self::drop_tcp_from) on `host`.
    pub fn clear_drops(&self, host: &Host) -> anyhow::Result<()> {
        nft(host, &["delete", "table", "inet", "hydra_lab"], None)
            .with_context(|| format!("removing drop rules on {}", host.name))
            .map(drop)
    }

    /// Drops every UDP datagram arriving on or leaving `host` (its own table, so TCP drops stay
    /// as they are): the peer mesh's gossip is lost both ways while HTTP still flows.
    pub fn drop_udp(&self, host: &Host) -> anyhow::Result<()> {
        let script = "table inet hydra_lab_udp {}\n\
             flush table inet hydra_lab_udp\n\
             table inet hydra_lab_udp {\n\
               chain input {\n\
                 type filter hook input priority 0; policy accept;\n\
                 meta l4proto udp drop\n\
               }\n\
               chain output {\n\
                 type filter hook output priority 0; policy accept;\n\
                 meta l4proto udp drop\n\
               }\n\
             }\n";
        nft(host, &["-f", "-"], Some(script))
            .with_context(|| format!("installing the UDP drop on {}", host.name))
            .map(drop)
    }

    /// Removes the drop set by [`drop_udp`](Self::drop_udp) on `host`.
    pub fn clear_udp_drop(&self, host: &Host) -> anyhow::Result<()> {
        nft(host, &["delete", "table", "inet", "hydra_lab_udp"], None)
            .with_context(|| format!("removing the UDP drop on {}", host.name))
            .map(drop)
    }

    /// The nftables ruleset of `host`, as `nft list ruleset` prints it.
    pub fn ruleset(&self, host: &Host) -> anyhow::Result<String> {
        nft(host, &["list", "ruleset"], None)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in self.hosts.drain(..).rev() {
            if let Err(error) = ip(&["netns", "del", &host]) {
                eprintln!("[lab] cleanup: {error:#}");
            }
        }
        for bridge in self.bridges.drain(..).rev() {
            if let Err(error) = ip(&["link", "del", &bridge]) {
                eprintln!("[lab] cleanup: {error:#}");
            }
        }
    }
}

/// Runs `nft ARGS` in `host`'s namespace (bounded: 10 s), with `script` on its standard input;
/// answers what it printed.
fn nft(host: &Host, args: &[&str], script: Option<&str>) -> anyhow::Result<String> {
    let mut command = vec!["netns", "exec", host.name.as_str(), "nft"];
    command.extend_from_slice(args);
    run_bounded("ip", &command, script, Duration::from_secs(10))
}
