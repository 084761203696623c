//! Shared by the tests of `deploy/` (k8s_manifests.rs, k8s_certs.rs): the tools of
//! `scripts/install-k8s-tools.sh`, rendering, schema validation and reading the objects.
#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use shoal_integration::tools::run;

pub const NAMESPACE: &str = "shoal";
/// What the test gives `$(POD_IP)`, as the kubelet would the pod's IP.
pub const POD_IP: &str = "10.1.2.3";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn tools_dir() -> PathBuf {
    std::env::var_os("SHOAL_K8S_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/shoal-k8s-tools"))
}

/// `kubectl kustomize DIR`, as YAML and as JSON objects (PyYAML of kubernetes-validate's venv).
pub fn render(dir: &Path) -> Result<(String, Vec<Value>)> {
    let kubectl = tools_dir().join("bin/kubectl");
    let yaml = run(Command::new(&kubectl).arg("kustomize").arg(dir))
        .with_context(|| format!("kubectl kustomize {}", dir.display()))?
        .stdout;
    let yaml = String::from_utf8(yaml)?;
    let python = tools_dir().join("venv/bin/python");
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, yaml.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "YAML to JSON failed");
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok((yaml, objects))
}

/// `kubernetes-validate --strict` against Kubernetes 1.36 of `objects`; the error names what
/// failed.
pub fn validate(objects: &[&Value], dir: &Path) -> Result<()> {
    let file = dir.join("rendered.yaml");
    let text: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
    std::fs::write(&file, text.join("\n---\n"))?;
    let out = Command::new(tools_dir().join("venv/bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.36.0"])
        .arg(&file)
        .output()
        .context("kubernetes-validate")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "kubernetes-validate: {said}");
    let passed = said.matches("passed for resource").count();
    ensure!(
        passed == objects.len(),
        "kubernetes-validate passed {passed} of {} objects: {said}",
        objects.len()
    );
    Ok(())
}

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

pub fn str_of(v: &Value) -> Result<&str> {
    v.as_str().with_context(|| format!("not a string: {v}"))
}

pub fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The volume mounted at the longest mount path holding `path`, and `path` relative to it.
pub fn volume_for<'a>(
    pod: &'a Value,
    container: &Value,
    path: &str,
) -> Result<(&'a Value, String)> {
    let mount = array(&container["volumeMounts"])
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap_or_default();
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
        .with_context(|| format!("{path} is on no volume of {}", container["name"]))?;
    let name = &mount["name"];
    let volume = array(&pod["volumes"])
        .iter()
        .find(|v| &v["name"] == name)
        .with_context(|| format!("volume {name} not in the pod"))?;
    let rest = path[str_of(&mount["mountPath"])?.len()..]
        .trim_start_matches('/')
        .to_owned();
    Ok((volume, rest))
}

pub fn container<'a>(pod: &'a Value, key: &str, name: &str) -> Result<&'a Value> {
    array(&pod[key])
        .iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no {key} {name}"))
}

/// The ConfigMap file at `path` in `container` written to `dir`, for the real loaders.
pub fn config_file(
    objects: &[Value],
    pod: &Value,
    container: &Value,
    path: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let (volume, key) = volume_for(pod, container, path)?;
    let map = str_of(&volume["configMap"]["name"])
        .with_context(|| format!("{path} is not on a ConfigMap"))?;
    let data = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == map)
        .with_context(|| format!("no ConfigMap {map}"))?;
    let text = str_of(&data["data"][&key]).with_context(|| format!("{map} has no {key}"))?;
    let file = dir.join(&key);
    std::fs::write(&file, text)?;
    Ok(file)
}

/// A YAML file as JSON objects (PyYAML of kubernetes-validate's venv).
pub fn render_file(path: &Path) -> Result<(String, Vec<Value>)> {
    let yaml = std::fs::read_to_string(path)?;
    let out = run(Command::new(tools_dir().join("venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path))?;
    Ok((yaml, serde_json::from_slice(&out.stdout)?))
}
