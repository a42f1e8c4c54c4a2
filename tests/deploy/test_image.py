"""The Dockerfile, proven without a Docker engine.

hadolint lints it. Then its steps run for real, taken from the file itself:
the builder stage's COPY and RUN instructions build the wheel and install it
into a fresh virtual environment (the build context filtered through
.dockerignore; paths the Dockerfile owns, such as /opt/venv, moved under a
temporary folder), and the runtime stage's ENTRYPOINT starts the engine with
the runtime ENV, its HEALTHCHECK command must answer SERVING, and SIGTERM must
end it with exit code 0. What cannot run here (the base image, groupadd) is
checked for consistency instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.deploy.dockerfile import Stage, context_files, env_assignments, expand, parse

pytestmark = pytest.mark.slow

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# what a RUN inherits from the machine: how pip reaches its index, nothing of this test's venv
PASSED_THROUGH = re.compile(r"^(PIP_.*|HOME|LANG|LC_ALL|SSL_CERT_.*|(https?|no)_proxy)$", re.I)


def stages() -> tuple[Stage, Stage]:
    found = parse(DOCKERFILE.read_text())
    builders = [s for s in found if s.name == "builder"]
    assert len(builders) == 1, "expected one stage named builder"
    return builders[0], found[-1]


def owned_paths(builder: Stage, runtime: Stage) -> list[str]:
    """Absolute paths the Dockerfile creates (WORKDIR, COPY targets, path-valued ENV)."""
    paths: set[str] = set()
    for stage in (builder, runtime):
        for inst in stage.instructions:
            if inst.keyword == "WORKDIR":
                paths.add(inst.args)
            elif inst.keyword == "COPY" and inst.args.split()[-1].startswith("/"):
                paths.add(inst.args.split()[-1].rstrip("/"))
            elif inst.keyword == "ENV":
                paths |= {v for v in env_assignments(inst, {}).values() if re.fullmatch(r"/[^:$\s]*", v)}
    return sorted(paths, key=len, reverse=True)


class Rerooter:
    """Moves the Dockerfile's own absolute paths under `root` (system paths stay as they are)."""

    def __init__(self, root: Path, owned: list[str]) -> None:
        self.root = root
        self.owned = owned
        alternatives = "|".join(re.escape(p) for p in owned)
        self.pattern = re.compile(rf"(?<![^\s:=\"'])({alternatives})(?=[/\s:\"']|$)")

    def __call__(self, text: str) -> str:
        return self.pattern.sub(lambda m: str(self.root) + m.group(1), text)


@dataclass
class Built:
    root: Path
    reroot: Rerooter
    runtime: Stage


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Run the builder stage's instructions: context copy, then its RUN commands."""
    builder, runtime = stages()
    root = tmp_path_factory.mktemp("image")
    reroot = Rerooter(root, owned_paths(builder, runtime))
    context = context_files(ROOT)
    # `python` of the base image: an interpreter with pip, not this test's venv
    shim = root / "base-image-bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if PASSED_THROUGH.match(k)}
    env["PATH"] = f"{shim}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    cwd = root
    ran = 0
    for inst in builder.instructions:
        if inst.keyword == "ENV":
            env.update({k: reroot(v) for k, v in env_assignments(inst, env).items()})
        elif inst.keyword == "WORKDIR":
            cwd = Path(reroot(inst.args))
            cwd.mkdir(parents=True, exist_ok=True)
        elif inst.keyword == "COPY":
            *sources, dest = inst.args.split()
            target = cwd / dest
            for src in sources:
                files = [f for f in context if f == src or f.startswith(src.rstrip("/") + "/")]
                assert files, f"COPY {src}: nothing in the build context (.dockerignore?)"
                for f in files:
                    out = target / Path(f).name if f == src else target / Path(f).relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / f, out)
        elif inst.keyword == "RUN":
            # a RUN reaches the paths it writes only through ENV, so nothing lands outside `root`
            assert not reroot.pattern.search(inst.args), f"RUN names an absolute path: {inst.args}"
            done = subprocess.run(
                ["/bin/sh", "-c", inst.args], cwd=cwd, env=env, capture_output=True, text=True, timeout=420
            )
            assert done.returncode == 0, f"RUN {inst.args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            ran += 1
    assert ran, "the builder stage ran no command"
    yield Built(root=root, reroot=reroot, runtime=runtime)


def runtime_env(built: Built) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(built.root)}
    for inst in built.runtime.all("ENV"):
        env.update({k: built.reroot(v) for k, v in env_assignments(inst, env).items()})
    return env


def copied_venv(built: Built) -> Path:
    (copy,) = [i for i in built.runtime.all("COPY") if i.flags.get("from") == "builder"]
    src, dest = copy.args.split()
    # console scripts carry the venv's absolute path: the venv must land where it was built
    assert src == dest, f"COPY --from=builder {src} {dest}: the venv moves and its scripts break"
    return Path(built.reroot(dest))


def test_hadolint_passes_and_is_live(tmp_path: Path) -> None:
    hadolint = BIN / "hadolint"
    ours = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python -m http.server\n")
    theirs = subprocess.run([str(hadolint), "--no-color", str(bad)], capture_output=True, text=True)
    assert theirs.returncode != 0 and "DL3007" in theirs.stdout, theirs.stdout


def test_image_shape() -> None:
    builder, runtime = stages()
    assert builder.base == runtime.base, "the venv's interpreter symlink needs the same base image"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", runtime.base)
    user = runtime.one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), f"USER {user}: numeric, not root"
    assert any(f"--uid {uid}" in i.args for i in runtime.all("RUN")), "the USER's uid is never created"
    exposed = {int(p.split("/")[0]) for p in runtime.one("EXPOSE").args.split()}
    env: dict[str, str] = {}
    for inst in runtime.all("ENV"):
        env.update(env_assignments(inst, env))
    assert {int(env["ENGINE_PORT"]), int(env["ENGINE_METRICS_PORT"])} == exposed
    check = runtime.one("HEALTHCHECK").exec_form()
    assert check[:2] == ["engine", "health"]
    # no --target: `engine health` follows ENGINE_PROBE_PORT / ENGINE_PORT, as the engine does
    assert "--target" not in check
    assert runtime.one("ENTRYPOINT").exec_form() == ["engine", "serve"], "exec form, so SIGTERM reaches it"
    # nothing of the build context reaches the runtime image except through the builder's venv
    assert all(i.flags.get("from") == "builder" for i in runtime.all("COPY"))


def test_build_context_is_only_what_the_wheel_needs() -> None:
    files = context_files(ROOT)
    assert {"pyproject.toml", "README.md"} <= set(files)
    assert any(f.startswith("src/engine/models/default/") for f in files), "the default bundle is missing"
    stray = [f for f in files if not (f in ("pyproject.toml", "README.md") or f.startswith("src/"))]
    assert not stray, stray
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f or f.endswith(".pyc")]


def test_installed_venv_has_runtime_dependencies_only(built: Built) -> None:
    venv = copied_venv(built)
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    installed = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        bare = (re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in requirements)
        return {re.sub(r"[-_.]+", "-", name).lower() for name in bare}

    assert "tradescore-engine" in installed
    assert names(project["dependencies"]) <= installed
    extras = set().union(*(names(reqs) for reqs in project["optional-dependencies"].values()))
    extras.discard("tradescore-engine")
    assert not extras & installed, f"extras in the runtime image: {sorted(extras & installed)}"


def test_entrypoint_serves_healthcheck_passes_sigterm_exits_zero(built: Built) -> None:
    venv = copied_venv(built)
    env = runtime_env(built)
    # the image's ports, moved to free ones (this machine may use 50051); the rest as the image has it
    grpc_port, metrics_port = free_port(), free_port()
    image_port = env["ENGINE_PORT"]
    env["ENGINE_PORT"], env["ENGINE_METRICS_PORT"] = str(grpc_port), str(metrics_port)

    entry = built.runtime.one("ENTRYPOINT").exec_form()
    cmd = built.runtime.all("CMD")
    argv = entry + (cmd[-1].exec_form() if cmd else [])
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe is not None and Path(exe).parent == venv / "bin", f"{argv[0]} does not resolve into the venv"

    check = built.runtime.one("HEALTHCHECK")
    probe = [a.replace(f":{image_port}", f":{grpc_port}") for a in check.exec_form()]
    probe_exe = shutil.which(probe[0], path=env["PATH"])
    assert probe_exe is not None
    probe[0] = probe_exe

    server = subprocess.Popen(
        [exe, *argv[1:]], env=env, cwd=built.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        start_period = float(check.flags["start-period"].rstrip("s"))
        deadline = time.monotonic() + start_period + 30
        while True:
            answer = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
            if answer.returncode == 0:
                break
            assert server.poll() is None, "the engine exited before serving"
            assert time.monotonic() < deadline, f"no SERVING within the start period: {answer.stderr}"
            time.sleep(0.3)
        assert answer.stdout.strip() == "SERVING"

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert re.search(r'^engine_model_info\{.*version="[^"]+".*\} 1\.0$', metrics, re.M), metrics[:2000]
        # the kernels compiled in the builder served the start: nothing was compiled at start
        assert re.search(r"^engine_kernels_compiled 0\.0$", metrics, re.M), metrics[:2000]
        loaded = re.search(r"^engine_kernels_loaded (\d+)\.0$", metrics, re.M)
        assert loaded is not None and int(loaded.group(1)) > 0

        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, out
    assert "draining" in out
    started = re.search(
        r"serving \S+ on \S+ \(pid \d+\), ([\d.]+) s after the process started; kernels: "
        r"(\d+) from the cache, (\d+) compiled \(kernel cache (\S+) \((\w+);",
        out,
    )
    assert started is not None, out
    seconds, loaded_n, compiled_n, cache, state = started.groups()
    # "shipped": this process copied the builder's kernels into ENGINE_KERNEL_CACHE; "cached": the
    # HEALTHCHECK's `engine health`, started alongside, had copied them first
    assert int(compiled_n) == 0 and int(loaded_n) > 0 and state in ("shipped", "cached"), out
    assert Path(cache).is_relative_to(built.root), out  # ENGINE_KERNEL_CACHE of the image, rerooted
    print(f"\nimage start: serving {seconds} s after the process started, {loaded_n} kernels from the cache")
    # the bundle it served is the one inside the installed wheel, not the source tree
    loaded = re.search(r"loaded from (\S+)", out)
    assert loaded is not None and Path(loaded.group(1)).is_relative_to(venv), out
    after = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
    assert after.returncode != 0, "the HEALTHCHECK still passes with the engine stopped"


def test_rerooting_keeps_system_paths() -> None:
    builder, runtime = stages()
    reroot = Rerooter(Path("/tmp/x"), owned_paths(builder, runtime))
    assert "/opt/venv" in reroot.owned
    assert reroot("/opt/venv/bin:/usr/local/bin") == "/tmp/x/opt/venv/bin:/usr/local/bin"
    assert reroot('"$VIRTUAL_ENV/bin/pip"') == '"$VIRTUAL_ENV/bin/pip"'
    assert expand("$A/b:${A}", {"A": "/x"}) == "/x/b:/x"


def test_compiled_backend_starts_from_the_machine_code_shipped_in_the_image(built: Built) -> None:
    """`ENGINE_MODEL_BACKEND=compiled`: the builder's `engine compile --ship` compiled the default
    model too, so a start loads its machine code (llvmlite, already a numba dependency: no C
    compiler in the image) and compiles nothing, and still checks it against ONNX Runtime."""
    venv = copied_venv(built)
    env = runtime_env(built)
    env["ENGINE_PORT"], env["ENGINE_METRICS_PORT"] = str(free_port()), str(free_port())
    env["ENGINE_MODEL_BACKEND"] = "compiled"
    env["ENGINE_KERNEL_CACHE"] = str(built.root / "tmp" / "compiled-backend-kernels")  # a new pod's
    argv = built.runtime.one("ENTRYPOINT").exec_form()
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe is not None and Path(exe).parent == venv / "bin"
    server = subprocess.Popen(
        [exe, *argv[1:]], env=env, cwd=built.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.search(r"serving \S+ on ", line):
                break
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    log = "".join(lines) + (out or "")
    assert server.returncode == 0, log
    compiled = re.search(
        r"compiled backend, \d+ trees, (\w+) in [\d.]+ s; max \|compiled - ONNX Runtime\| (\S+)", log
    )
    assert compiled is not None, log
    assert compiled.group(1) == "cached", log  # shipped by the builder, not compiled at start
    assert float(compiled.group(2)) <= 1e-6
    assert "(backend compiled)" in log
    started = re.search(r"kernels: (\d+) from the cache, (\d+) compiled", log)
    assert started is not None and int(started.group(2)) == 0, log
