//! Emulated hosts: network namespaces joined to the host by veth pairs, with `tc tbf`
//! bandwidth caps. Everything made here is removed on drop. Addresses come from
//! 10.231.0.0/16 and exist only between the host and the test's own namespaces.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Result};

use crate::tools::{have, is_root, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces can be made here (root and iproute2's `ip` and `tc`).
pub fn available() -> bool {
    is_root() && have("ip") && have("tc")
}

/// A unique suffix for namespace names of this process.
fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Links alive in this process, by slot: slot `s` names the interfaces `sh{pid*64+s}h/n`
/// (interface names stop at 15 bytes) and numbers their /30 `10.231.{pid%250}.{4s}`. A slot
/// is reused only once its link is gone, so a process can make any number of links, up to
/// 64 at a time.
static LINK_SLOTS: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

fn take_link_slot() -> Result<u32> {
    let mut used = LINK_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = (0..64u32)
        .find(|s| *used & (1 << s) == 0)
        .ok_or_else(|| anyhow::anyhow!("64 links alive in this process: no address left"))?;
    *used |= 1 << slot;
    Ok(slot)
}

fn release_link_slot(slot: u32) {
    let mut used = LINK_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    *used &= !(1u64 << slot);
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))?;
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> Result<Self> {
        if !available() {
            bail!("network namespaces need root, ip and tc");
        }
        let name = format!("{prefix}-{}", unique());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair between the host and a namespace, removed on drop.
pub struct Link {
    slot: u32,
    host_dev: String,
    ns_dev: String,
    ns_name: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Link {
    /// Joins `ns` to the host: a /30 with one address each side.
    pub fn to_host(ns: &Netns) -> Result<Self> {
        let slot = take_link_slot()?;
        let n = (std::process::id() % 10_000) * 64 + slot;
        let (a, b) = ((n / 64) % 250, slot * 4);
        let link = Self {
            slot,
            host_dev: format!("sh{n}h"),
            ns_dev: format!("sh{n}n"),
            ns_name: ns.name.clone(),
            host_ip: format!("10.231.{a}.{}", b + 1),
            ns_ip: format!("10.231.{a}.{}", b + 2),
        };
        ip(&[
            "link",
            "add",
            &link.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &link.ns_dev,
            "netns",
            &ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", link.host_ip),
            "dev",
            &link.host_dev,
        ])?;
        ip(&["link", "set", &link.host_dev, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", link.ns_ip),
            "dev",
            &link.ns_dev,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &link.ns_dev, "up"])?;
        Ok(link)
    }

    /// Caps what the namespace sends to the host at `mbit` Mbit/s (tbf on its veth end).
    pub fn cap_ns_egress(&self, mbit: u64) -> Result<()> {
        tbf(Some(&self.ns_name), &self.ns_dev, mbit)
    }

    /// Caps what the host sends to the namespace at `mbit` Mbit/s.
    pub fn cap_host_egress(&self, mbit: u64) -> Result<()> {
        tbf(None, &self.host_dev, mbit)
    }
}

impl Link {
    /// Routes everything the namespace sends outside its /30 through the host, so that
    /// namespaces joined to the host can reach each other (with [`Forwarding`] on).
    pub fn route_via_host(&self) -> Result<()> {
        ip(&[
            "-n",
            &self.ns_name,
            "route",
            "replace",
            "default",
            "via",
            &self.host_ip,
        ])
    }

    /// Bytes the namespace has sent out through this link (received by the host end).
    pub fn ns_sent_bytes(&self) -> Result<u64> {
        self.host_counter("rx_bytes")
    }

    /// Bytes the namespace has received through this link (sent by the host end).
    pub fn ns_received_bytes(&self) -> Result<u64> {
        self.host_counter("tx_bytes")
    }

    fn host_counter(&self, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/{name}", self.host_dev);
        let text =
            std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?;
        Ok(text.trim().parse()?)
    }
}

/// IPv4 forwarding on the host, so that namespaces joined to it by [`Link`]s reach each
/// other. The first guard saves the setting and turns it on; the last one dropped puts the
/// saved setting back.
pub struct Forwarding(());

static FORWARDING: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Forwarding {
    pub fn enable() -> Result<Self> {
        let mut state = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            let saved = std::fs::read_to_string(IP_FORWARD)?;
            std::fs::write(IP_FORWARD, "1\n")?;
            state.1 = Some(saved);
        }
        state.0 += 1;
        Ok(Self(()))
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut state = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            if let Some(saved) = state.1.take() {
                let _ = std::fs::write(IP_FORWARD, saved);
            }
        }
    }
}

fn tbf(ns: Option<&str>, dev: &str, mbit: u64) -> Result<()> {
    let rate = format!("{mbit}mbit");
    // A burst of at least rate/HZ worth of bytes (and 64 KiB) keeps tbf accurate.
    let burst = format!("{}", (mbit * 1_000_000 / 8 / 100).max(64 * 1024));
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend([
        "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "latency",
        "100ms",
    ]);
    run(Command::new("tc").args(&args))?;
    Ok(())
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end removes the pair.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .status();
        release_link_slot(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_reachable_and_capped() -> Result<()> {
        if crate::tools::skip_unless(&["ip", "tc"], true) {
            return Ok(());
        }
        let ns = Netns::create("shoal-t")?;
        let link = Link::to_host(&ns)?;
        link.cap_ns_egress(100)?;
        if have("ping") {
            run(Command::new("ping").args(["-c", "1", "-W", "2", &link.ns_ip]))?;
        }
        let addrs = run(ns.command("ip").args(["addr", "show"]))?;
        assert!(String::from_utf8_lossy(&addrs.stdout).contains(&link.ns_ip));
        let qdisc = run(ns.command("tc").args(["qdisc", "show"]))?;
        assert!(String::from_utf8_lossy(&qdisc.stdout).contains("tbf"));
        let name = ns.name().to_string();
        drop(link);
        drop(ns);
        let list = run(Command::new("ip").args(["netns", "list"]))?;
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
        Ok(())
    }
}
