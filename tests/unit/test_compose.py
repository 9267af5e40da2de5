"""Static validation of the scale-out deployment: docker-compose.yml, Dockerfile and deploy/.

No Docker engine runs on the development machines, so this is `docker compose config`-level
validation in Python (ARCHITECTURE.md, "The scale-out deployment"). The compose file is read the
way compose reads it: YAML anchors and merge keys resolved, ``${VAR}`` / ``${VAR:-default}`` /
``${VAR:?error}`` interpolation, ``$$`` as a literal dollar. Each rule is a function
``rule(name, service, deployment) -> [problem, ...]`` applied to every service (parametrized, so a
failure names the service and the rule); the negative tests at the end feed the same rules
synthetic bad services to prove each one rejects what it should.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
CLI_PATH = REPO / "plugins" / "lakeforge" / "cli.py"

#: `lakeforge <sub>` commands the CLI has (plugins/lakeforge/cli.py, checked there too when present).
LAKEFORGE_COMMANDS = frozenset({"up", "down", "status", "logs", "env", "produce", "serve", "demo"})
#: `airflow <group> [<sub>]` commands the compose file may run (checked against Airflow 3.3's CLI;
#: `celery worker` comes from apache-airflow-providers-celery). None: the command has no subcommand.
AIRFLOW_COMMANDS: dict[str, frozenset[str] | None] = {
    "api-server": None,
    "scheduler": None,
    "dag-processor": None,
    "triggerer": None,
    "db": frozenset({"migrate", "check"}),
    "pools": frozenset({"set"}),
    "jobs": frozenset({"check"}),
    "celery": frozenset({"worker"}),
}
SPARK_DAEMONS = frozenset({"org.apache.spark.deploy.master.Master", "org.apache.spark.deploy.worker.Worker"})
#: Environment keys and variable names that hold secrets.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)
CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
TOP_LEVEL_KEYS = frozenset({"name", "services", "volumes", "networks", "configs", "secrets", "include"})
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[?::1\]?)$")
SHELL_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")"})
#: Words after which the next token is again a command (`exec lakeforge serve`, `then airflow ...`).
COMMAND_PREFIXES = SHELL_SEPARATORS | {"exec", "then", "do", "else", "!", "time"}


# ------------------------------------------------------------------------------------------------
# Interpolation, as compose does it
# ------------------------------------------------------------------------------------------------

_REF = r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
REF = re.compile(_REF)
TOKEN = re.compile(r"\$\$|" + _REF)  # `$$` first, so an escaped dollar never starts a reference


@dataclass(frozen=True)
class VarRef:
    """One ``${...}`` reference in the compose file."""

    name: str
    op: str | None  # None, ":-", "-", ":?", "?", ":+", "+"
    arg: str | None

    @property
    def required(self) -> bool:
        return self.op in (":?", "?")


class MissingVariable(Exception):
    """A ``${VAR:?msg}`` whose variable is unset (or empty): compose refuses to start."""


def var_refs(text: str) -> list[VarRef]:
    """The ``${...}`` references in a string, ``$$`` escapes skipped."""
    return [VarRef(m["name"], m["op"], m["arg"]) for m in TOKEN.finditer(text) if m.group(0) != "$$"]


def has_bare_dollar(text: str) -> bool:
    """True when a ``$`` is neither ``$$`` nor part of a flat ``${VAR...}`` (``$VAR``, ``${A:-${B}}``)."""
    return "$" in TOKEN.sub("", text) or any("$" in (r.arg or "") for r in var_refs(text))


def interpolate(text: str, env: dict[str, str], strict: bool = True) -> str:
    """Compose's interpolation of one string. ``strict=False`` leaves ``<NAME>`` for required ones."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        value, is_set = env.get(name), name in env
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if is_set else arg
        if op in (":?", "?"):
            if (op == ":?" and not value) or (op == "?" and not is_set):
                if strict:
                    raise MissingVariable(f"required variable {name} is missing a value: {arg}")
                return f"<{name}>"
            return value or ""
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if is_set else ""
        return value or ""

    return TOKEN.sub(sub, text)


def interpolate_tree(node: Any, env: dict[str, str], strict: bool = True) -> Any:
    """Interpolate every string value of a parsed compose document (keys are left alone)."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, strict) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, strict) for v in node]
    if isinstance(node, str):
        return interpolate(node, env, strict)
    return node


def strings(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every string value in a document, with its key path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, path + (i,))
    elif isinstance(node, str):
        yield path, node


def read_env_example(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``NAME=value`` lines of deploy/.env.example (comments and blanks skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: not NAME=value: {line!r}"
            out[name.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------
# The deployment and its rules
# ------------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """A parsed compose document and the repository its relative paths point into."""

    compose: dict[str, Any]
    repo: Path = REPO

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.compose.get("services") or {}

    @property
    def volumes(self) -> dict[str, Any]:
        return self.compose.get("volumes") or {}

    def dependents(self, target: str) -> list[tuple[str, str]]:
        """(service, condition) pairs of the services that depend on ``target``."""
        out = []
        for name, svc in self.services.items():
            deps = svc.get("depends_on") or {}
            if isinstance(deps, dict) and target in deps:
                out.append((name, (deps[target] or {}).get("condition", "service_started")))
            elif isinstance(deps, list) and target in deps:
                out.append((name, "service_started"))
        return out


def load_deployment(path: Path = COMPOSE_PATH) -> Deployment:
    return Deployment(yaml.safe_load(path.read_text()))


def is_one_shot(svc: dict) -> bool:
    """Init jobs: run once and exit (``restart: "no"``)."""
    return svc.get("restart") == "no"


def environment(svc: dict) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return env


def command_lines(svc: dict) -> list[list[str]]:
    """The service's command, entrypoint and healthcheck as token lists, one per shell line."""
    pieces: list[Any] = [svc.get("entrypoint"), svc.get("command")]
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
        test = test[1:]
    pieces.append(test)
    lines: list[list[str]] = []
    for piece in pieces:
        if isinstance(piece, list):
            # an exec-form list is one argv, but a `sh -c "script"` element holds shell lines
            lines.append([str(t) for t in piece])
            for token in piece:
                if isinstance(token, str) and ("\n" in token or " " in token):
                    lines.extend(_shell_tokens(token))
        elif isinstance(piece, str):
            lines.extend(_shell_tokens(piece))
    return lines


def _shell_tokens(script: str) -> list[list[str]]:
    out = []
    for line in script.splitlines():
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            out.append(list(lexer))
        except ValueError:  # unbalanced quotes in a fragment: fall back to whitespace
            out.append(line.split())
    return out


def invocations(lines: list[list[str]], program: str) -> list[list[str]]:
    """Arguments of every call of ``program`` (by name or path, in command position), up to the next
    shell separator. ``pg_isready -d airflow`` is not a call of airflow."""
    calls = []
    for tokens in lines:
        for i, tok in enumerate(tokens):
            in_command_position = i == 0 or tokens[i - 1] in COMMAND_PREFIXES
            if in_command_position and (tok == program or tok.endswith("/" + program)):
                args = []
                for t in tokens[i + 1 :]:
                    if t in SHELL_SEPARATORS:
                        break
                    args.append(t)
                calls.append(args)
    return calls


Rule = Callable[[str, dict, Deployment], list[str]]


def rule_image_or_build(name: str, svc: dict, dep: Deployment) -> list[str]:
    """An image or a build whose Dockerfile exists; pulled images carry a pinned tag."""
    problems = []
    build, image = svc.get("build"), svc.get("image")
    if not build and not image:
        return ["has neither image nor build"]
    if build:
        spec = {"context": build} if isinstance(build, str) else build
        context = dep.repo / interpolate(spec.get("context", "."), {}, strict=False)
        dockerfile = context / spec.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"build: no Dockerfile at {dockerfile}")
    elif image:
        ref = interpolate(str(image), {}, strict=False)
        repo_part, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        if "@sha256:" not in ref and (not tag or tag == "latest"):
            problems.append(f"image {ref!r} is not pinned to a tag")
    return problems


def rule_restart(name: str, svc: dict, dep: Deployment) -> list[str]:
    """``restart`` is a string (unquoted YAML ``no`` is the boolean false, which compose rejects)."""
    if "restart" in svc and not isinstance(svc["restart"], str):
        return [f"restart is {svc['restart']!r} ({type(svc['restart']).__name__}): quote it, e.g. \"no\""]
    return []


def rule_healthcheck(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Long-running services have a healthcheck with test, interval, timeout and retries."""
    if is_one_shot(svc):
        return []
    hc = svc.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable"):
        return ["no healthcheck (one-shot jobs must say restart: \"no\")"]
    problems = []
    test = hc.get("test")
    if isinstance(test, list):
        if len(test) < 2 or test[0] not in ("CMD", "CMD-SHELL"):
            problems.append(f"healthcheck.test {test!r} must start with CMD or CMD-SHELL and name a command")
    elif not (isinstance(test, str) and test.strip()):
        problems.append("healthcheck has no test")
    for key in ("interval", "timeout"):
        if not DURATION.match(str(hc.get(key, ""))):
            problems.append(f"healthcheck.{key} missing or not a duration: {hc.get(key)!r}")
    if not (isinstance(hc.get("retries"), int) and hc["retries"] > 0):
        problems.append(f"healthcheck.retries missing or not a positive int: {hc.get('retries')!r}")
    return problems


def rule_one_shot(name: str, svc: dict, dep: Deployment) -> list[str]:
    """An init job is awaited with service_completed_successfully by at least one service."""
    dependents = dep.dependents(name)
    if is_one_shot(svc):
        if not dependents:
            return ["one-shot job that no service waits for (depends_on ... service_completed_successfully)"]
        return [f"{who} waits for this one-shot job with {cond}, not service_completed_successfully"
                for who, cond in dependents if cond != "service_completed_successfully"]
    return [f"{who} waits for service_completed_successfully but this service keeps running"
            for who, cond in dependents if cond == "service_completed_successfully"]


def rule_ports(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Ports are quoted strings bound to an explicit loopback address."""
    problems = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            ip = str(port.get("host_ip", ""))
            if not LOOPBACK.match(ip):
                problems.append(f"port {port!r}: host_ip must be a loopback address")
            continue
        if not isinstance(port, str):
            problems.append(f"port {port!r} is a {type(port).__name__}: quote it (YAML reads 80:80 as a number)")
            continue
        resolved = interpolate(port, {}, strict=False)
        m = re.match(r"^(?P<ip>\[[0-9a-fA-F:]+\]|[\d.]+):(?P<host>\d+(-\d+)?):(?P<cont>\d+(-\d+)?)(/(tcp|udp))?$",
                     resolved)
        if not m:
            problems.append(f"port {port!r} is not HOST_IP:HOST_PORT:CONTAINER_PORT")
        elif not LOOPBACK.match(m["ip"]):
            problems.append(f"port {port!r} binds {m['ip']}, not loopback")
    return problems


_URI_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@")


def _credential_problems(where: str, value: str) -> list[str]:
    """Passwords inside URIs (scheme://user:PASSWORD@host) must be required ${...} references."""
    refs: list[VarRef] = []

    def mark(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$$"
        refs.append(VarRef(m["name"], m["op"], m["arg"]))
        return f"\x00{len(refs) - 1}\x00"

    masked = TOKEN.sub(mark, value)
    problems = []
    for m in _URI_CREDENTIALS.finditer(masked):
        pw = re.fullmatch(r"\x00(\d+)\x00", m["pw"])
        if not pw or not refs[int(pw[1])].required:
            problems.append(f"{where}: password in URI is not a ${{VAR:?...}} reference")
    return problems


def rule_environment(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Env values are strings; secret keys hold only ``${VAR:?...}``; URIs carry no literal password."""
    problems = []
    env = svc.get("environment") or {}
    if isinstance(env, list):
        problems.append("environment is a list: use a mapping (KEY: value) so values can be checked")
    for key, value in environment(svc).items():
        if not isinstance(value, str):
            problems.append(f"environment {key}={value!r} is a {type(value).__name__}, not a string"
                            " (quote it: YAML 1.1 and compose disagree on booleans)")
            continue
        if has_bare_dollar(value):
            problems.append(f"environment {key}: use ${{VAR}} (or $$ for a literal $), not a bare $")
        # `*_FILE` / `*_PATH` keys name a file that holds the secret (the Docker convention): a path is fine
        points_to_file = key.endswith(("_FILE", "_PATH")) and value.startswith("/")
        if SECRET_NAME.search(key) and not points_to_file:
            m = REF.fullmatch(value.strip())
            if not m or m["op"] not in (":?", "?"):
                problems.append(f"environment {key} holds a secret: its value must be ${{VAR:?message}}, "
                                f"got {value!r}")
        problems += _credential_problems(f"environment {key}", value)
    return problems


def rule_secret_variables(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Secret variables are required (``:?``, no default) and reach the container only by environment."""
    problems = []
    for path, value in strings(svc):
        for ref in var_refs(value):
            if not SECRET_NAME.search(ref.name):
                continue
            where = ".".join(map(str, path))
            if not ref.required:
                problems.append(f"{where}: secret ${{{ref.name}}} must use ${{{ref.name}:?...}} (no default, "
                                "fail loudly when unset)")
            if path[0] != "environment":
                problems.append(f"{where}: secret ${{{ref.name}}} outside environment (pass it as an env var)")
        if path[0] != "environment":
            problems += _credential_problems(".".join(map(str, path)), value)
    return problems


def rule_depends_on(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Dependencies name existing services, with an explicit condition that fits the target."""
    deps = svc.get("depends_on")
    if deps is None:
        return []
    if not isinstance(deps, dict):
        return ["depends_on is a list: use the mapping form with a condition per service"]
    problems = []
    for target, spec in deps.items():
        if target == name:
            problems.append("depends on itself")
            continue
        other = dep.services.get(target)
        if other is None:
            problems.append(f"depends on {target!r}, which is not a service")
            continue
        cond = (spec or {}).get("condition")
        if cond not in CONDITIONS:
            problems.append(f"depends_on {target}: condition {cond!r} not one of {sorted(CONDITIONS)}")
        elif cond == "service_healthy" and not other.get("healthcheck"):
            problems.append(f"depends_on {target}: service_healthy but {target} has no healthcheck")
        if is_one_shot(other) and cond != "service_completed_successfully":
            problems.append(f"depends_on {target}: a one-shot job needs service_completed_successfully")
        mine, theirs = set(svc.get("profiles") or []), set(other.get("profiles") or [])
        if theirs and not (mine and mine <= theirs):
            problems.append(f"depends_on {target}: {target} only runs under profiles {sorted(theirs)}")
    return problems


def rule_volumes(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Named volumes are declared; repo bind mounts point at files that exist; no absolute host paths."""
    problems = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            kind, source = vol.get("type", "volume"), str(vol.get("source", ""))
        else:
            parts = str(vol).split(":")
            if len(parts) == 1:
                problems.append(f"volume {vol!r} is anonymous: name it")
                continue
            source = parts[0]
            kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
        if kind == "bind":
            if not source.startswith("./"):
                problems.append(f"bind mount {vol!r}: use a path inside the repo (./...), not a host path")
            elif not (dep.repo / source).exists():
                problems.append(f"bind mount {vol!r}: {source} does not exist in the repo")
        elif kind == "volume" and source not in dep.volumes:
            problems.append(f"volume {source!r} is not declared under top-level volumes")
    return problems


def rule_project_commands(name: str, svc: dict, dep: Deployment) -> list[str]:
    """`lakeforge <sub>`, `airflow <cmd>`, `spark-class <Main>` and jobs/*.py that the service runs exist."""
    problems = []
    lines = command_lines(svc)
    for args in invocations(lines, "lakeforge"):
        if not args or args[0] not in LAKEFORGE_COMMANDS:
            problems.append(f"runs `lakeforge {' '.join(args[:1])}`: not one of {sorted(LAKEFORGE_COMMANDS)}")
    for args in invocations(lines, "airflow"):
        if not args or args[0] not in AIRFLOW_COMMANDS:
            problems.append(f"runs `airflow {' '.join(args[:1])}`: not a known Airflow command")
            continue
        subs = AIRFLOW_COMMANDS[args[0]]
        if subs is not None and (len(args) < 2 or args[1] not in subs):
            problems.append(f"runs `airflow {' '.join(args[:2])}`: expected one of {sorted(subs)}")
    for args in invocations(lines, "spark-class"):
        if not args or args[0] not in SPARK_DAEMONS:
            problems.append(f"runs `spark-class {' '.join(args[:1])}`: expected one of {sorted(SPARK_DAEMONS)}")
    for tokens in lines:
        for tok in tokens:
            for rel in re.findall(r"(?:^|/|\./)(jobs/[\w./-]+\.py)\b", tok):
                if not (dep.repo / rel).is_file():
                    problems.append(f"runs {rel}, which does not exist")
    return problems


def rule_devices(name: str, svc: dict, dep: Deployment) -> list[str]:
    """Device reservations ask the nvidia driver for GPUs, by count or id."""
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    problems = []
    for d in devices:
        if d.get("driver") != "nvidia":
            problems.append(f"device {d!r}: driver must be nvidia")
        if "gpu" not in (d.get("capabilities") or []):
            problems.append(f"device {d!r}: capabilities must include gpu")
        if "count" not in d and "device_ids" not in d:
            problems.append(f"device {d!r}: give count or device_ids")
    return problems


RULES: list[Rule] = [
    rule_image_or_build,
    rule_restart,
    rule_healthcheck,
    rule_one_shot,
    rule_ports,
    rule_environment,
    rule_secret_variables,
    rule_depends_on,
    rule_volumes,
    rule_project_commands,
    rule_devices,
]


def validate(dep: Deployment) -> dict[str, list[str]]:
    """All problems of a deployment, by service (empty dict: valid)."""
    out: dict[str, list[str]] = {}
    for name, svc in dep.services.items():
        problems = [p for rule in RULES for p in rule(name, svc, dep)]
        if problems:
            out[name] = problems
    return out


def gpu_services(dep: Deployment) -> list[str]:
    return [n for n, s in dep.services.items()
            if (((s.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")]


# ------------------------------------------------------------------------------------------------
# Dockerfile reading
# ------------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not buf):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        if full:
            instr, _, args = full.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def dockerfile_base_images(instrs: list[tuple[str, str]]) -> list[str]:
    """FROM images with the global ARG defaults substituted."""
    args: dict[str, str] = {}
    images = []
    for instr, rest in instrs:
        if instr == "ARG" and not images:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instr == "FROM":
            image = [t for t in rest.split() if not t.startswith("--")][0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image))
    return images


# ================================================================================================
# Tests on the real files
# ================================================================================================

DEPLOYMENT = load_deployment()
SERVICES = sorted(DEPLOYMENT.services)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__.removeprefix("rule_"))
@pytest.mark.parametrize("service", SERVICES)
def test_service_rule(service: str, rule: Rule) -> None:
    problems = rule(service, DEPLOYMENT.services[service], DEPLOYMENT)
    assert not problems, f"{service}: " + "; ".join(problems)


def test_top_level_keys() -> None:
    unknown = {k for k in DEPLOYMENT.compose if k not in TOP_LEVEL_KEYS and not k.startswith("x-")}
    assert not unknown, f"unknown top-level keys {sorted(unknown)}"
    assert DEPLOYMENT.services, "no services"


def test_expected_services_present() -> None:
    needed = {"kafka", "minio", "minio-init", "postgres", "mlflow", "airflow-init", "airflow-api-server",
              "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "spark-master", "spark-worker",
              "model-server", "prometheus", "grafana", "redis", "airflow-worker"}
    assert needed <= set(SERVICES), f"missing services {sorted(needed - set(SERVICES))}"


def test_declared_volumes_are_used() -> None:
    used = {str(v).split(":")[0] for s in DEPLOYMENT.services.values() for v in s.get("volumes") or []
            if isinstance(v, str)}
    assert set(DEPLOYMENT.volumes) <= used, f"declared but unused volumes {sorted(set(DEPLOYMENT.volumes) - used)}"


def test_no_bare_dollars_anywhere() -> None:
    bad = [(p, v) for p, v in strings(DEPLOYMENT.compose) if has_bare_dollar(v)]
    assert not bad, f"use ${{VAR}} or $$, not a bare $: {bad}"


def test_interpolates_with_env_example_filled() -> None:
    env = {k: v or f"dummy-{k.lower()}" for k, v in read_env_example().items()}
    resolved = interpolate_tree(DEPLOYMENT.compose, env)
    pg = resolved["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert pg.endswith("@postgres:5432/mlflow") and "dummy-postgres_password" in pg


def test_missing_secret_stops_interpolation() -> None:
    env = {k: v or f"dummy-{k.lower()}" for k, v in read_env_example().items()}
    for secret in ("POSTGRES_PASSWORD", "LAKEFORGE_S3_SECRET_ACCESS_KEY", "AIRFLOW_JWT_SECRET"):
        partial = {**env, secret: ""}
        with pytest.raises(MissingVariable, match=secret):
            interpolate_tree(DEPLOYMENT.compose, partial)


def test_every_variable_is_in_env_example() -> None:
    used = {r.name for _, v in strings(DEPLOYMENT.compose) for r in var_refs(v)}
    listed = set(read_env_example())
    assert used <= listed, f"used in docker-compose.yml but not in deploy/.env.example: {sorted(used - listed)}"
    assert listed <= used, f"listed in deploy/.env.example but unused: {sorted(listed - used)}"


def test_env_example_holds_no_secret_values() -> None:
    filled = {k: v for k, v in read_env_example().items() if SECRET_NAME.search(k) and v}
    assert not filled, f"deploy/.env.example must leave secrets empty: {sorted(filled)}"


def test_dotenv_is_ignored_by_git_and_docker() -> None:
    gitignore = (REPO / ".gitignore").read_text().split()
    assert ".env" in gitignore, ".gitignore must list .env (docker compose reads secrets from it)"
    dockerignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv"):
        assert entry in dockerignore, f".dockerignore must exclude {entry}"


def test_gpu_worker_reserves_a_device_and_serves_queue_gpu() -> None:
    gpus = gpu_services(DEPLOYMENT)
    assert gpus, "no service reserves a GPU (deploy.resources.reservations.devices)"
    for name in gpus:
        svc = DEPLOYMENT.services[name]
        workers = invocations(command_lines(svc), "airflow")
        queues = [w[w.index("--queues") + 1] for w in workers if w[:2] == ["celery", "worker"] and "--queues" in w]
        assert queues and queues[0].split(",") == ["gpu"], f"{name}: expected a Celery worker on queue gpu only"
        assert svc.get("profiles"), f"{name}: GPU services must be behind a profile (not every host has a GPU)"


def test_gpu_queue_is_routed_to() -> None:
    # The GPU worker only takes queue `gpu`: some task must be sent there, or it idles forever.
    sources = [p for p in (REPO / "dags").glob("*.py")] + [REPO / "plugins" / "lakeforge" / "operators.py"]
    text = "\n".join(p.read_text() for p in sources if p.is_file())
    assert re.search(r"""queue\s*=\s*["']gpu["']""", text), (
        "no task uses queue=\"gpu\": set it on train_model (LocalExecutor ignores queues)")


def test_airflow_init_creates_every_pool_the_dags_use() -> None:
    # a task in a pool that does not exist is never scheduled
    from lakeforge.services.airflow_server import POOLS

    used = set(re.findall(r"""pool\s*=\s*["'](\w+)["']""", (REPO / "dags" / "lakeforge_pipelines.py").read_text()))
    assert used >= {"gpu", "spark"} and used <= set(POOLS), (used, POOLS)  # the local setup creates POOLS
    init = DEPLOYMENT.services["airflow-init"]
    pools = [a for a in invocations(command_lines(init), "airflow") if a[:2] == ["pools", "set"]]
    for name in used:
        assert any(a[2] == name and a[3].isdigit() for a in pools), f"airflow-init must run `airflow pools set {name} N`"
    assert any(a[:2] == ["db", "migrate"] for a in invocations(command_lines(init), "airflow"))


def test_celery_services_need_the_celery_provider() -> None:
    uses_celery = any(a[:1] == ["celery"] for s in DEPLOYMENT.services.values()
                      for a in invocations(command_lines(s), "airflow"))
    if not uses_celery:
        pytest.skip("no Celery worker in the compose file")
    lock = (REPO / "requirements" / "lock.txt").read_text()
    assert re.search(r"^apache-airflow-providers-celery==", lock, re.M), (
        "the celery profile runs `airflow celery worker`: add apache-airflow-providers-celery to "
        "requirements/requirements.in and regenerate requirements/lock.txt")


def test_postgres_init_creates_every_database_used() -> None:
    sql = (REPO / "deploy" / "postgres" / "init.sql").read_text()
    created = set(re.findall(r"CREATE\s+DATABASE\s+(\w+)", sql, re.I))
    assert {"airflow", "mlflow"} <= created
    used = {db for _, v in strings(DEPLOYMENT.compose) for db in re.findall(r"@postgres:\d+/(\w+)", v)}
    assert used and used <= created, f"databases used but not created: {sorted(used - created)}"


def test_prometheus_scrapes_compose_services() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "model-server" in jobs and jobs["model-server"].get("metrics_path", "/metrics") == "/metrics"
    for job in jobs.values():
        for target in (t for sc in job.get("static_configs", []) for t in sc["targets"]):
            host = target.rpartition(":")[0]
            assert host == "localhost" or host in DEPLOYMENT.services, f"{job['job_name']}: {target} is no service"


def test_grafana_datasource_points_at_prometheus() -> None:
    files = list((REPO / "deploy" / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
    assert files, "no provisioned Grafana datasource"
    sources = [d for f in files for d in yaml.safe_load(f.read_text())["datasources"]]
    assert any(d["type"] == "prometheus" and d["url"] == "http://prometheus:9090" for d in sources)


def test_kafka_image_matches_embedded_broker_version() -> None:
    pom = REPO / "jvm" / "kafka" / "pom.xml"
    if not pom.is_file():
        pytest.skip("jvm/kafka/pom.xml not written yet")
    want = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    image = DEPLOYMENT.services["kafka"]["image"]
    assert want and image.endswith(":" + want[1]), f"kafka image {image} vs pom kafka.version {want and want[1]}"


def test_lakeforge_commands_exist_in_cli() -> None:
    calls = [a for s in DEPLOYMENT.services.values() for a in invocations(command_lines(s), "lakeforge")]
    assert calls, "no `lakeforge` command in the compose file (model-server runs `lakeforge serve`)"
    if not CLI_PATH.is_file():
        pytest.skip("plugins/lakeforge/cli.py not written yet")
    text = CLI_PATH.read_text()
    for args in calls:
        assert re.search(rf"\b{re.escape(args[0])}\b", text), f"`lakeforge {args[0]}` not found in {CLI_PATH}"
    # and the real CLI accepts the exact flags the services pass
    typer = pytest.importorskip("typer")
    from lakeforge.cli import app

    group = typer.main.get_command(app)
    for args in calls:
        cmd = group.commands.get(args[0])
        assert cmd is not None, f"lakeforge CLI has no command {args[0]!r}"
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for flag in (a.split("=")[0] for a in args[1:] if a.startswith("-")):
            assert flag in opts, f"`lakeforge {args[0]}` has no option {flag} (has {sorted(opts)})"


# --- Dockerfile ---------------------------------------------------------------------------------

DOCKER_INSTRS = dockerfile_instructions(DOCKERFILE.read_text()) if DOCKERFILE.is_file() else []


def _runs() -> list[str]:
    return [args for instr, args in DOCKER_INSTRS if instr == "RUN"]


def test_dockerfile_multi_stage_on_python_311_slim() -> None:
    images = dockerfile_base_images(DOCKER_INSTRS)
    assert len(images) >= 2, f"expected a multi-stage build, FROM lines: {images}"
    assert all(i.startswith("python:3.11-slim") for i in images), images


def test_dockerfile_installs_the_lock() -> None:
    copies = " ".join(a for i, a in DOCKER_INSTRS if i == "COPY")
    assert "requirements/lock.txt" in copies and "requirements/no-deps.txt" in copies
    locked = [r for r in _runs() if re.search(r"pip install (?:\S+ )*-r \S*lock\.txt", r)]
    assert locked, "no `pip install -r .../lock.txt`"
    assert "--mount=type=cache" in locked[0], "the lock install should use a pip cache mount"
    assert any(re.search(r"pip install --no-deps -r \S*no-deps\.txt", r) for r in _runs()), (
        "no `pip install --no-deps -r .../no-deps.txt`")
    assert any(re.search(r"pip install (?:\S+ )*(-e )?\.(\s|$)", r) for r in _runs()), "project not installed"


def test_dockerfile_bakes_the_jars() -> None:
    runs = _runs()
    assert any(re.search(r"apt-get install .*openjdk-17-jdk-headless", r) and "maven" in r for r in runs)
    jar_runs = [r for r in runs if "python -m lakeforge.services.jars" in r]
    assert jar_runs, "the image must resolve the jars with `python -m lakeforge.services.jars`"
    assert "iceberg-spark-runtime" in jar_runs[0] and "iceberg-aws-bundle" in jar_runs[0], (
        "check that Iceberg's Spark runtime and its S3FileIO bundle came out")
    assert not any("hadoop-aws" in r or "/s3a/" in r for r in runs), "Spark loads no Hadoop S3 connector any more"
    assert (REPO / "plugins" / "lakeforge" / "services" / "jars.py").is_file()
    pom = REPO / "jvm" / "iceberg" / "pom.xml"
    assert pom.is_file(), "jvm/iceberg/pom.xml (Iceberg's Spark runtime, S3FileIO, catalog drivers) missing"
    for artifact in ("iceberg-spark-runtime", "iceberg-aws-bundle", "<artifactId>postgresql<", "sqlite-jdbc"):
        assert artifact in pom.read_text(), f"jvm/iceberg/pom.xml lacks {artifact}"
    assert not (REPO / "jvm" / "s3a").exists(), "jvm/s3a (hadoop-aws) is gone: nothing may resolve it"


def test_dockerfile_environment_and_user() -> None:
    env = " ".join(a for i, a in DOCKER_INSTRS if i == "ENV")
    for name in ("AIRFLOW_HOME=", "PYSPARK_PYTHON=", "AIRFLOW__CORE__DAGS_FOLDER=", "AIRFLOW__CORE__PLUGINS_FOLDER=",
                 "LAKEFORGE_JAR_CACHE=", "JAVA_HOME="):
        assert name in env, f"Dockerfile sets no {name.rstrip('=')}"
    users = [a for i, a in DOCKER_INSTRS if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"final USER must not be root: {users}"
    assert not [a for i, a in DOCKER_INSTRS if i == "HEALTHCHECK"], "healthchecks live in docker-compose.yml"


def test_dockerfile_copy_sources_exist() -> None:
    missing = []
    for instr, args in DOCKER_INSTRS:
        tokens = args.split()
        if instr not in ("COPY", "ADD") or any(t.startswith("--from") for t in tokens):
            continue
        for src in [t for t in tokens if not t.startswith("--")][:-1]:
            if not (REPO / src).exists():
                missing.append(src)
    assert not missing, f"Dockerfile copies paths that do not exist: {missing}"


@pytest.mark.slow
def test_spark_connection_resolves_to_the_master(tmp_path: Path) -> None:
    """The real SparkSubmitHook reads AIRFLOW_CONN_SPARK_DEFAULT as the compose file sets it."""
    conn = DEPLOYMENT.services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_SPARK_DEFAULT"]
    code = ("from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook as H; "
            "c = H(conn_id='spark_default')._connection; print(c['master'], c['deploy_mode'])")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONN_SPARK_DEFAULT": conn}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["spark://spark-master:7077", "client"]


# ================================================================================================
# The rules reject what they should (synthetic bad services)
# ================================================================================================

GOOD = {
    "image": "example/app:1.0",
    "restart": "unless-stopped",
    "healthcheck": {"test": ["CMD", "true"], "interval": "10s", "timeout": "5s", "retries": 3},
}


def deployment_with(**services: dict) -> Deployment:
    compose = {"services": {"db": copy.deepcopy(GOOD), **services}, "volumes": {"data": None}}
    return Deployment(compose)


def test_a_good_service_passes() -> None:
    svc = {**GOOD, "ports": ["127.0.0.1:8080:8080"], "volumes": ["data:/data", "./dags:/dags:ro"],
           "environment": {"PASSWORD": "${PW:?set PW}", "URI": "postgresql://u:${PW:?x}@db/x", "MODE": "fast"},
           "command": ["lakeforge", "serve", "--port", "8000"],
           "depends_on": {"db": {"condition": "service_healthy"}}}
    assert validate(deployment_with(app=svc)) == {}


BAD_SERVICES: list[tuple[str, dict, str]] = [
    ("no image or build", {k: v for k, v in GOOD.items() if k != "image"}, "neither image nor build"),
    ("unpinned image", {**GOOD, "image": "redis"}, "not pinned"),
    ("latest image", {**GOOD, "image": "redis:latest"}, "not pinned"),
    ("build without Dockerfile", {**GOOD, "build": {"context": "deploy"}}, "no Dockerfile"),
    ("no healthcheck", {"image": "a:1"}, "no healthcheck"),
    ("healthcheck without retries", {**GOOD, "healthcheck": {"test": ["CMD", "true"], "interval": "5s",
                                                             "timeout": "5s"}}, "retries"),
    ("healthcheck test without CMD", {**GOOD, "healthcheck": {**GOOD["healthcheck"], "test": ["curl", "x"]}},
     "CMD or CMD-SHELL"),
    ("restart parsed as boolean", {**GOOD, "restart": False}, "quote it"),
    ("port without address", {**GOOD, "ports": ["8080:8080"]}, "HOST_IP"),
    ("port on all interfaces", {**GOOD, "ports": ["0.0.0.0:8080:8080"]}, "not loopback"),
    ("port as a number", {**GOOD, "ports": [8080]}, "quote it"),
    ("literal password", {**GOOD, "environment": {"POSTGRES_PASSWORD": "hunter2"}}, "holds a secret"),
    ("secret with a default", {**GOOD, "environment": {"API_TOKEN": "${API_TOKEN:-dev}"}}, "holds a secret"),
    ("password in a URI", {**GOOD, "environment": {"DB_URI": "postgresql://u:hunter2@db/x"}}, "password in URI"),
    ("optional password in a URI", {**GOOD, "environment": {"DB_URI": "postgresql://u:${PW:-x}@db/x"}},
     "password in URI"),
    ("secret on the command line", {**GOOD, "command": ["serve", "--token", "${API_TOKEN:?x}"]},
     "outside environment"),
    ("boolean env value", {**GOOD, "environment": {"DEBUG": True}}, "not a string"),
    ("bare dollar", {**GOOD, "environment": {"HOME_DIR": "$HOME/x"}}, "bare $"),
    ("env list form", {**GOOD, "environment": ["A=b"]}, "is a list"),
    ("depends_on list form", {**GOOD, "depends_on": ["db"]}, "mapping form"),
    ("depends_on unknown service", {**GOOD, "depends_on": {"nope": {"condition": "service_started"}}},
     "not a service"),
    ("depends_on bad condition", {**GOOD, "depends_on": {"db": {"condition": "healthy"}}}, "condition"),
    ("undeclared volume", {**GOOD, "volumes": ["cache:/cache"]}, "not declared"),
    ("missing repo file", {**GOOD, "volumes": ["./deploy/nope.yml:/etc/x.yml:ro"]}, "does not exist"),
    ("host path", {**GOOD, "volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "inside the repo"),
    ("anonymous volume", {**GOOD, "volumes": ["/data"]}, "anonymous"),
    ("unknown lakeforge command", {**GOOD, "command": ["lakeforge", "serv"]}, "lakeforge serv"),
    ("lakeforge in a shell script", {**GOOD, "command": ["sh", "-c", "set -e\nexec lakeforge train --x"]},
     "lakeforge train"),
    ("unknown airflow command", {**GOOD, "command": ["airflow", "webserver"]}, "airflow webserver"),
    ("unknown airflow subcommand", {**GOOD, "command": "airflow db init && airflow scheduler"}, "airflow db init"),
    ("missing job file", {**GOOD, "command": ["spark-submit", "jobs/nope.py"]}, "jobs/nope.py"),
    ("unknown spark daemon", {**GOOD, "command": ["spark-class", "org.apache.spark.deploy.Client"]}, "spark-class"),
    ("device without nvidia", {**GOOD, "deploy": {"resources": {"reservations": {"devices": [
        {"driver": "amd", "count": 1, "capabilities": ["gpu"]}]}}}}, "nvidia"),
    ("device without gpu capability", {**GOOD, "deploy": {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "count": 1, "capabilities": ["compute"]}]}}}}, "gpu"),
    ("one-shot job nobody waits for", {"image": "a:1", "restart": "no"}, "no service waits"),
]


@pytest.mark.parametrize("svc,expected", [(s, e) for _, s, e in BAD_SERVICES], ids=[n for n, _, _ in BAD_SERVICES])
def test_rules_reject_bad_service(svc: dict, expected: str) -> None:
    problems = validate(deployment_with(bad=svc)).get("bad", [])
    assert any(expected in p for p in problems), f"expected a problem containing {expected!r}, got {problems}"


def test_rules_reject_bad_relations() -> None:
    init = {"image": "a:1", "restart": "no"}
    # a one-shot job awaited as if it were healthy
    dep = deployment_with(init=init, app={**GOOD, "depends_on": {"init": {"condition": "service_healthy"}}})
    assert any("service_completed_successfully" in p for p in validate(dep).get("app", []))
    # service_completed_successfully on a long-running service
    dep = deployment_with(app={**GOOD, "depends_on": {"db": {"condition": "service_completed_successfully"}}})
    assert any("keeps running" in p for p in validate(dep).get("db", []))
    # a default service that depends on a profile-only service
    dep = deployment_with(redis={**GOOD, "profiles": ["celery"]},
                          app={**GOOD, "depends_on": {"redis": {"condition": "service_healthy"}}})
    assert any("profiles" in p for p in validate(dep).get("app", []))
    # service_healthy on a target without a healthcheck
    dep = deployment_with(plain={"image": "a:1", "restart": "no"},
                          app={**GOOD, "depends_on": {"plain": {"condition": "service_healthy"}}})
    assert any("no healthcheck" in p for p in validate(dep).get("app", []))


@pytest.mark.parametrize("text,env,expected", [
    ("${A}", {"A": "1"}, "1"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("$${A}", {"A": "1"}, "${A}"),
    ("x$$y", {}, "x$y"),
    ("${A:+on}", {"A": "1"}, "on"),
])
def test_interpolate(text: str, env: dict, expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolate_required() -> None:
    with pytest.raises(MissingVariable, match="A"):
        interpolate("${A:?set A}", {"A": ""})
    assert interpolate("${A:?set A}", {}, strict=False) == "<A>"
    assert var_refs("$${A} ${B:?x}") == [VarRef("B", ":?", "x")]
    assert has_bare_dollar("$A") and has_bare_dollar("${A:-${B}}") and not has_bare_dollar("$$A ${B}")
