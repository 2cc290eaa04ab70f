#!/usr/bin/env python3
"""Runs the pods of a rendered manifest with the real binary, without Kubernetes.

    deploy/run_pods.py --bin target/debug/pollen MANIFEST [--restore RESTORE_MANIFEST] [--ipv6]

What a node would do with the agents' DaemonSet, as far as it can be done on one machine: in a
network namespace of its own (root and `ip netns` needed), with every volume a temporary
directory standing in for the host path or the ConfigMap, and every absolute path in the
containers' arguments and environment moved under it:

1. A node's containerd configuration is put in the `containerd-config` volume (a config.toml
   with `config_path` set, and a hosts.toml of the user's own for docker.io).
2. The init containers run in order and must exit 0: hosts.toml files now point at the agent.
3. The agent container starts with the manifest's environment (`$(VAR)` references and the
   downward API's pod and host IPs resolved as the kubelet would); its startup, liveness and
   readiness probes must pass (the kubelet's httpGet, by port name), and it must stop within
   terminationGracePeriodSeconds of SIGTERM.
4. With --restore, the uninstall path's init containers run, and the containerd directory
   must be exactly as it was before step 2.

This checks what schema validation cannot: that the binary accepts the flags, environment and
files the chart gives it, and that the probes reach it.
"""

import argparse
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

NODE_HOSTS_TOML = 'server = "https://registry-1.docker.io"\n# the user\'s own\n'


SWARM_KEY = "/key/swarm/psk/1.0.0/\n/base16/\n" + secrets.token_hex(32) + "\n"


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(manifest, component):
    for d in docs(manifest):
        if d["kind"] in ("DaemonSet", "StatefulSet") and \
                d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component:
            return d["spec"]["template"]["spec"]
    return None


class Pod:
    def __init__(self, spec, root, ip, netns, config_maps):
        self.spec, self.root, self.ip, self.netns = spec, root, ip, netns
        self.volumes = {}
        for v in spec.get("volumes", []):
            d = root / "volumes" / v["name"]
            d.mkdir(parents=True, exist_ok=True)
            if "configMap" in v:
                for key, text in config_maps.get(v["configMap"]["name"], {}).items():
                    (d / key).write_text(text)
            if "secret" in v and v["name"] == "swarm-key":
                # The Secret the operator (or the chart) makes: one key for every pod of the run.
                f = d / "swarm.key"
                f.write_text(SWARM_KEY)
                f.chmod(v["secret"].get("defaultMode", 0o644))
            self.volumes[v["name"]] = d

    def remap(self, container):
        """mountPath -> directory, longest first, for one container."""
        pairs = []
        for m in container.get("volumeMounts", []):
            host = self.volumes[m["name"]]
            if "subPath" in m:
                host = host / m["subPath"]
            pairs.append((m["mountPath"].rstrip("/"), str(host)))
        return sorted(pairs, key=lambda p: -len(p[0]))

    def env(self, container):
        env, pairs = {"PATH": os.environ.get("PATH", "")}, self.remap(container)
        for e in container.get("env", []):
            if "valueFrom" in e:
                field = e["valueFrom"]["fieldRef"]["fieldPath"]
                assert field in ("status.podIP", "status.hostIP"), field
                env[e["name"]] = self.ip
                continue
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
            env[e["name"]] = moved(value, pairs)
        return env

    def command(self, binary, container):
        pairs = self.remap(container)
        env = self.env(container)
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                for a in container.get("args", [])]
        return ["ip", "netns", "exec", self.netns, binary] + [moved(a, pairs) for a in args], env


def moved(value, pairs):
    for mount, host in pairs:
        if value == mount or value.startswith(mount + "/"):
            return host + value[len(mount):]
    return value


def http_get(ip, port, path, netns):
    host = f"[{ip}]" if ":" in ip else ip
    r = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-w",
                        "%{http_code}", "--max-time", "3", f"http://{host}:{port}{path}"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def wait_probe(pod, container, probe_name, deadline):
    probe = container[probe_name]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    port = ports.get(probe["port"], probe["port"])
    ip = probe.get("host", pod.ip)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if http_get(ip, port, probe["path"], pod.netns) == "200":
            return True
        time.sleep(0.2)
    print(f"   {probe_name} {probe['path']} on {ip}:{port} never answered 200")
    return False


def snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def run_init(pod, binary, spec_key="initContainers"):
    for c in pod.spec.get(spec_key, []):
        cmd, env = pod.command(binary, c)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            print(f"   init container {c['name']} exited {r.returncode}:\n{r.stdout}{r.stderr}")
            return False
        print(f"   init container {c['name']}: ok")
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--restore")
    ap.add_argument("--ipv6", action="store_true", help="the pod's and node's IP is ::1")
    a = ap.parse_args()
    binary = str(pathlib.Path(a.bin).resolve())
    config_maps = {d["metadata"]["name"]: d.get("data", {})
                   for d in docs(a.manifest) if d["kind"] == "ConfigMap"}
    spec = pod_spec(a.manifest, "agent")
    if spec is None:
        sys.exit(f"{a.manifest}: no agent DaemonSet")
    netns = f"pollen-pods-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    root = pathlib.Path(tempfile.mkdtemp(prefix="pollen-pods."))
    agent = None
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        ip = "::1" if a.ipv6 else "127.0.0.1"
        pod = Pod(spec, root, ip, netns, config_maps)
        ctd = pod.volumes.get("containerd-config")
        if ctd is not None:
            (ctd / "config.toml").write_text(
                f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
                f'  config_path = "{ctd}/certs.d"\n')
            (ctd / "certs.d" / "docker.io").mkdir(parents=True)
            (ctd / "certs.d" / "docker.io" / "hosts.toml").write_text(NODE_HOSTS_TOML)
        before = snapshot(ctd) if ctd else {}
        if not run_init(pod, binary):
            return 1
        if ctd is not None:
            hosts = (ctd / "certs.d" / "docker.io" / "hosts.toml").read_text()
            if ":65001" not in hosts:
                print(f"   hosts.toml does not point at the agent:\n{hosts}")
                return 1
        container = next(c for c in spec["containers"] if c["name"] == "agent")
        cmd, env = pod.command(binary, container)
        log = open(root / "agent.log", "w")
        agent = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        startup = container["startupProbe"]
        ok = wait_probe(pod, container, "startupProbe",
                        startup["periodSeconds"] * startup["failureThreshold"])
        ok = ok and wait_probe(pod, container, "livenessProbe", 10)
        ok = ok and wait_probe(pod, container, "readinessProbe", 10)
        if not ok:
            print((root / "agent.log").read_text()[-3000:])
            return 1
        print("   agent: startup, liveness and readiness probes pass")
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(timeout=spec.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            print("   agent did not stop within terminationGracePeriodSeconds of SIGTERM")
            return 1
        agent = None
        if code != 0:
            print(f"   agent exited {code} after SIGTERM")
            return 1
        print("   agent: stopped on SIGTERM")
        if a.restore:
            # The same root: its volumes are the same node's host paths as the agent's.
            restore = Pod(pod_spec(a.restore, "restore") or {}, root, ip, netns, config_maps)
            if not run_init(restore, binary) or snapshot(ctd) != before:
                print("   the containerd directory is not what it was before the install")
                return 1
            print("   restore: the containerd directory is as it was")
        return 0
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        subprocess.run(["ip", "netns", "del", netns])
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
