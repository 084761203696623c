//! The preheat routes of the real server, in process on 127.0.0.1 (plaintext: TLS is covered
//! by `serve.rs` and the cluster test): a node registers and heartbeats on the main listener
//! through [`PreheatClient`]; jobs go through the token-authenticated admin listener; the
//! state survives a restart on the same file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shoal_p2p::preheat::proto::{
    Heartbeat, JobSpec, JobState, NodeInfo, Target, TaskProgress, TaskState,
};
use shoal_p2p::preheat::{ClientAuth, PreheatClient};
use shoal_p2p::tls::Transport;
use shoal_registry_ext::{serve, Config, Listeners};
use tokio::net::TcpListener;

const TOKEN: &str = "api-test-token-0123456789";
const IMAGE: &str = "127.0.0.1:5000/app:v1";

struct Server {
    api: SocketAddr,
    admin: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), shoal_registry_ext::Error>>,
}

impl Server {
    async fn start(dir: &Path) -> Self {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (api_addr, admin_addr) = (api.local_addr().unwrap(), admin.local_addr().unwrap());
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadvertise = \"{api_addr}\"\nmetrics_listen = \"\"\n\
             registry_host = \"127.0.0.1:5000\"\ninsecure_plaintext = true\n\
             [manifests]\ndir = {:?}\n[seed]\ndir = {:?}\n\
             [preheat]\nenabled = true\nstate = {:?}\nheartbeat_interval_ms = 100\n\
             down_after_ms = 60000\nadmin_listen = \"{admin_addr}\"\ntokens = [{TOKEN:?}]\n",
            dir.join("manifests"),
            dir.join("blobs"),
            dir.join("preheat/state.redb"),
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let listeners = Listeners {
            api,
            metrics: None,
            notify: None,
            preheat_admin: Some(admin),
        };
        let task = tokio::spawn(serve(config, listeners, async move {
            let _ = stopped.await;
        }));
        Self {
            api: api_addr,
            admin: admin_addr,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    fn node_client(&self) -> PreheatClient {
        let auth = ClientAuth::Cluster(Transport::Plaintext);
        PreheatClient::new(
            &format!("http://{}", self.api),
            &auth,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn admin_client(&self, token: &str) -> PreheatClient {
        let auth = ClientAuth::Token {
            token: token.into(),
            ca: None,
        };
        PreheatClient::new(
            &format!("http://{}", self.admin),
            &auth,
            Duration::from_secs(5),
        )
        .unwrap()
    }
}

fn spec() -> JobSpec {
    JobSpec {
        targets: vec![Target {
            images: vec![IMAGE.into()],
            selector: [("group".to_string(), "a".to_string())].into(),
            nodes: vec![],
        }],
    }
}

fn info() -> NodeInfo {
    NodeInfo {
        name: "node-0".into(),
        labels: [("group".to_string(), "a".to_string())].into(),
        kernel: "6.1".into(),
        containerd: "1.6.20".into(),
        shoal: "0.1.0".into(),
    }
}

#[tokio::test]
async fn jobs_need_a_token_on_the_admin_listener_and_run_over_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let node = server.node_client();
    let admin = server.admin_client(TOKEN);

    // No token, a wrong one: 401, and no job made.
    let e = server
        .admin_client("wrong-token-0123456789")
        .submit(&spec())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    let bare = reqwest::Client::new();
    let url = format!("http://{}/v1/preheat/jobs", server.admin);
    let resp = bare.post(&url).json(&spec()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = bare
        .get(format!("http://{}/v1/preheat/nodes", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Registration and heartbeats are not on the admin listener.
    let e = admin.register(&info()).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    // A job selecting nobody is refused with the reason.
    let e = admin.submit(&spec()).await.unwrap_err();
    assert!(
        e.status() == Some(400) && e.to_string().contains("selects no node"),
        "{e}"
    );
    assert!(admin.jobs().await.unwrap().jobs.is_empty());

    // Malformed bodies get 400.
    let resp = bare
        .post(format!("http://{}/v1/preheat/heartbeat", server.api))
        .header("content-type", "application/json")
        .body("{\"node\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // A node registers; a job on it is dispatched by its heartbeat and finishes.
    let registered = node.register(&info()).await.unwrap();
    assert_eq!(registered.heartbeat_interval_ms, 100);
    let job = admin.submit(&spec()).await.unwrap();
    assert_eq!((job.id.as_str(), job.state), ("1", JobState::Running));
    let hb = |state: Option<TaskState>| Heartbeat {
        node: "node-0".into(),
        tasks: state
            .map(|state| TaskProgress {
                job: "1".into(),
                image: IMAGE.into(),
                state,
                bytes_done: 5,
                bytes_total: 5,
                error: None,
            })
            .into_iter()
            .collect(),
    };
    let reply = node.heartbeat(&hb(None)).await.unwrap();
    assert!(reply.registered);
    assert_eq!(reply.tasks.len(), 1);
    let reply = node.heartbeat(&hb(Some(TaskState::Done))).await.unwrap();
    assert!(reply.tasks.is_empty());
    let job = admin.job("1").await.unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(admin.cancel("1").await.unwrap().state, JobState::Done);
    let e = admin.job("9").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    // The node client (the main listener) reaches the admin routes too.
    assert_eq!(node.nodes().await.unwrap().nodes.len(), 1);
    server.stop().await;

    // Restarted on the same state: the node and the job with its log are back.
    let server = Server::start(dir.path()).await;
    let admin = server.admin_client(TOKEN);
    let nodes = admin.nodes().await.unwrap();
    assert_eq!(nodes.nodes[0].info, info());
    let job = admin.job("1").await.unwrap();
    assert_eq!(job.state, JobState::Done);
    assert!(
        job.log.iter().any(|l| l.message.starts_with("finished:")),
        "{:?}",
        job.log
    );
    server.stop().await;
}
