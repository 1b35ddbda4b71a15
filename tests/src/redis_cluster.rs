//! A throwaway Redis Cluster on 127.0.0.1: six `redis-server`s in cluster mode (three
//! masters, one replica each), made with `redis-cli --cluster create`, no persistence.
//! The node timeout is short so a killed master is replaced in a few seconds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::paths::{redis_cli_bin, redis_server_bin};
use crate::ports::free_port;
use crate::process::Process;
use crate::wait::eventually;

/// Masters, and one replica per master.
pub const MASTERS: usize = 3;
pub const NODES: usize = MASTERS * 2;
/// `cluster-node-timeout`: a master unreachable this long is suspected, then failed
/// over once a majority of masters agree.
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct ClusterNode {
    pub port: u16,
    process: Process,
    /// SIGSTOPped: asking it anything would hang.
    frozen: bool,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        self.process.pid().is_some() && self.process.exited().is_none()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges (`0-5460`), for a master.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes, joins them into a cluster with `--cluster-replicas 1`, and
    /// waits until every node says `cluster_state:ok` and every replica is in sync.
    pub async fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<ClusterNode> = (0..NODES)
            .map(|i| {
                let (port, bus) = (free_port(), free_port());
                let node_dir = dir.join(format!("redis-{port}"));
                std::fs::create_dir_all(&node_dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", node_dir.display()));
                let process = Process::spawn(
                    &format!("redis-node-{}", i + 1),
                    &redis_server_bin(),
                    node_args(port, bus, &node_dir),
                    dir,
                );
                ClusterNode {
                    port,
                    process,
                    frozen: false,
                }
            })
            .collect();
        let mut cluster = RedisCluster { nodes };
        for i in 0..NODES {
            let port = cluster.nodes[i].port;
            cluster.nodes[i].process.assert_running();
            eventually(
                "a cluster node to answer PING",
                Duration::from_secs(10),
                || async move { (cli(port, &["PING"]).trim() == "PONG").then_some(()) },
            )
            .await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(redis_cli_bin())
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster.wait_replicas_in_sync(Duration::from_secs(30)).await;
        cluster
    }

    /// Every node's URL, comma-separated: what `--redis` takes in cluster mode.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.process.pid().is_some() && !n.frozen)
            .map(|n| n.port)
            .collect()
    }

    /// A running node, to ask about the cluster.
    fn any_live_port(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .unwrap_or_else(|| panic!("no cluster node is running"))
    }

    /// `redis-cli -c --raw` (following redirections) against a running node.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.any_live_port();
        let out = Command::new(redis_cli_bin())
            .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis-cli --raw` against one node, no redirection.
    pub fn node_cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// `CLUSTER NODES` as seen by a running node.
    pub fn topology(&self) -> Vec<NodeLine> {
        parse_nodes(&cli(self.any_live_port(), &["CLUSTER", "NODES"]))
    }

    /// Ports of the masters serving slots, by a running node's view.
    pub fn master_ports(&self) -> Vec<u16> {
        self.topology()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of `key` (the cluster computes it).
    pub fn slot_of(&self, key: &str) -> u16 {
        let out = cli(self.any_live_port(), &["CLUSTER", "KEYSLOT", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {out:?}"))
    }

    /// The port of the master serving `key`'s slot now.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.topology()
            .into_iter()
            .find(|n| n.master && !n.failed && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
    }

    /// The port of the replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let nodes = self.topology();
        let master = nodes
            .iter()
            .find(|n| n.port == master_port)
            .unwrap_or_else(|| panic!("no node on port {master_port}"));
        nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("master {master_port} has no replica"))
    }

    fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// SIGKILL the node on `port`: no goodbye, sockets reset, its unreplicated writes lost.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).process.kill();
    }

    /// SIGSTOP the node on `port`: its sockets stay open and nothing answers, as when a
    /// host dies or a network drops its packets (no reset tells a client anything).
    pub fn freeze(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.process.pause();
        node.frozen = true;
    }

    /// Waits until `slot` (served by `old_master` before it was killed) is served by
    /// another, live master (its replica, promoted) and every running node says the
    /// cluster is `ok` again; returns the new master's port.
    pub async fn wait_failover(&self, old_master: u16, slot: u16, timeout: Duration) -> u16 {
        let started = Instant::now();
        let ports = self.live_ports();
        let new_master = eventually(
            &format!("a replica to take over slot {slot} from the master on {old_master}"),
            timeout,
            || {
                let ports = ports.clone();
                async move {
                    let port = *ports.first()?;
                    let nodes = parse_nodes(&cli(port, &["CLUSTER", "NODES"]));
                    nodes
                        .iter()
                        .find(|n| n.master && !n.failed && n.serves(slot))
                        .map(|n| n.port)
                        .filter(|&p| p != old_master)
                }
            },
        )
        .await;
        self.wait_ok(timeout.saturating_sub(started.elapsed()))
            .await;
        new_master
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub async fn wait_ok(&self, timeout: Duration) {
        let ports = self.live_ports();
        eventually(
            "every running cluster node to say cluster_state:ok",
            timeout,
            || {
                let ports = ports.clone();
                async move {
                    ports
                        .iter()
                        .all(|&p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Waits until every running replica's link to its master is up.
    pub async fn wait_replicas_in_sync(&self, timeout: Duration) {
        let ports = self.live_ports();
        eventually(
            "every replica to be in sync with its master",
            timeout,
            || {
                let ports = ports.clone();
                async move {
                    ports
                        .iter()
                        .all(|&p| {
                            let info = cli(p, &["INFO", "replication"]);
                            !info.contains("role:slave") || info.contains("master_link_status:up")
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Keys matching a glob on every master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .master_ports()
            .into_iter()
            .flat_map(|port| {
                cli(port, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys
    }

    /// Keys on all masters.
    pub fn dbsize(&self) -> u64 {
        self.master_ports()
            .into_iter()
            .map(|port| cli(port, &["DBSIZE"]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    }

    pub fn process(&mut self, port: u16) -> &mut Process {
        &mut self.node_mut(port).process
    }
}

impl NodeLine {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

fn node_args(port: u16, bus: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        // Explicit: the default (port + 10000) may be taken, or above 65535.
        "--cluster-port",
        &bus.to_string(),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &dir.join("nodes.conf").display().to_string(),
        "--cluster-node-timeout",
        &NODE_TIMEOUT_MS.to_string(),
        "--dir",
        &dir.display().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        // Replicas sync at once instead of waiting 5 s for more replicas to join.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `CLUSTER NODES` (or a `nodes.conf`): one line per node.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
