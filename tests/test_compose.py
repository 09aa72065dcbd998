"""compose/ is wired right: Docker cannot run on the build machines, so this test is its check."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import yaml
from fastapi import FastAPI

from coherent_cache import CacheConfig
from coherent_cache.config import ENV_PREFIX

from .support.otlp_receiver import otlp_environment

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
APPS = ("app1", "app2")
SERVICES = {"valkey", "jaeger", *APPS, "balancer", "publisher"}


def load_services() -> dict[str, dict[str, Any]]:
    """The ``services`` mapping of the compose file (YAML merge keys resolved)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    services = document["services"]
    assert isinstance(services, dict)
    return cast(dict[str, dict[str, Any]], services)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, from either compose form."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    assert isinstance(env, dict)
    return {str(name): str(value) for name, value in env.items()}


def depends_on(service: dict[str, Any]) -> list[str]:
    """The names a service depends on, from either compose form."""
    deps = service.get("depends_on", [])
    return [str(name) for name in deps]


def dockerfile(service: dict[str, Any]) -> Path:
    """The Dockerfile a service is built from."""
    build = service["build"]
    assert isinstance(build, dict)
    context = (COMPOSE_DIR / str(build.get("context", "."))).resolve()
    return context / str(build.get("dockerfile", "Dockerfile"))


def assert_pinned(image: str) -> None:
    """``image`` names a tag (or digest), and the tag is not ``latest``."""
    if "@sha256:" in image:
        return
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    assert tag != "latest", f"{image}: 'latest' is not a pin"


def nginx_upstreams() -> list[tuple[str, int]]:
    """(host, port) of every ``server`` in the upstream blocks of compose/nginx.conf."""
    text = (COMPOSE_DIR / "nginx.conf").read_text()
    servers: list[tuple[str, int]] = []
    for block in re.findall(r"upstream\s+\w+\s*\{(.*?)\}", text, flags=re.DOTALL):
        for host, port in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block, flags=re.M):
            servers.append((host, int(port)))
    return servers


def dockerfile_cmd(path: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile."""
    match = re.search(r"^CMD\s+(\[.*\])\s*$", path.read_text(), flags=re.MULTILINE)
    assert match is not None, f"{path}: no exec-form CMD"
    parsed = yaml.safe_load(match.group(1))
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


class TestServices:
    def test_every_service_exists(self) -> None:
        """The stack has Valkey, Jaeger, two app replicas, the balancer and the publisher."""
        assert SERVICES == set(load_services())

    def test_images_are_pinned(self) -> None:
        """Every image, and every Dockerfile base image, has a tag other than ``latest``;
        a service without an image is built from a Dockerfile that exists."""
        for name, service in load_services().items():
            if "image" in service:
                assert_pinned(str(service["image"]))
            else:
                path = dockerfile(service)
                assert path.is_file(), f"{name}: {path} missing"
                for base in re.findall(r"^FROM\s+(\S+)", path.read_text(), flags=re.M):
                    assert_pinned(base)

    def test_ports_bound_to_loopback(self) -> None:
        """Every published port is bound to 127.0.0.1."""
        for name, service in load_services().items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"

    def test_depends_on_targets_exist(self) -> None:
        """Every ``depends_on`` names a service; those waited on as healthy have a check."""
        services = load_services()
        for name, service in services.items():
            for target in depends_on(service):
                assert target in services, f"{name} depends on unknown {target}"
                deps = service["depends_on"]
                if isinstance(deps, dict) and deps[target].get("condition") == ("service_healthy"):
                    assert "healthcheck" in services[target], f"{target} has no healthcheck"

    def test_startup_order(self) -> None:
        """The apps wait for a healthy Valkey, the balancer for healthy apps."""
        services = load_services()
        for app in APPS:
            assert "valkey" in depends_on(services[app])
        assert set(APPS) <= set(depends_on(services["balancer"]))
        assert "valkey" in depends_on(services["publisher"])

    def test_jaeger_accepts_otlp(self) -> None:
        """Jaeger has OTLP enabled and publishes its UI and both OTLP ports."""
        jaeger = load_services()["jaeger"]
        assert "true" == environment(jaeger)["COLLECTOR_OTLP_ENABLED"]
        published = {str(port).split(":")[1] for port in jaeger["ports"]}
        assert {"16686", "4317", "4318"} == published

    def test_mounted_files_exist(self) -> None:
        """Every file mounted from the repository exists."""
        for name, service in load_services().items():
            for volume in service.get("volumes", []):
                source = str(volume).split(":")[0]
                if source.startswith("."):
                    assert (COMPOSE_DIR / source).exists(), f"{name}: {source} missing"


class TestEnvironment:
    def test_cache_variables_are_valid_config(self) -> None:
        """Every service's ``COHERENT_CACHE_*`` variables are real fields with valid values."""
        for service in load_services().values():
            env = {k: v for k, v in environment(service).items() if k.startswith(ENV_PREFIX)}
            if env:
                CacheConfig.from_env(environ=env)

    def test_apps_and_publisher_share_redis_and_namespace(self) -> None:
        """The Redis URL's host is the Valkey service; every client uses one namespace."""
        services = load_services()
        configs = [
            CacheConfig.from_env(environ=environment(services[name]))
            for name in (*APPS, "publisher")
        ]
        for config in configs:
            assert config.redis_url is not None
            parts = urlsplit(config.redis_url)
            assert "valkey" == parts.hostname
            assert 6379 == parts.port
        assert 1 == len({config.namespace for config in configs})

    def test_otlp_endpoints_name_a_service(self) -> None:
        """Every OTLP endpoint's host is a service of the stack, and each client names itself."""
        services = load_services()
        for name in (*APPS, "publisher"):
            env = environment(services[name])
            host = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname
            assert host in services
            assert env["OTEL_SERVICE_NAME"]

    def test_apps_export_otlp_as_the_end_to_end_test_does(self) -> None:
        """The apps set exactly the OTEL_* variables the OTLP end-to-end test sets
        (tests/coherence/test_otlp.py, through `otlp_environment`), with the same protocol:
        a base URL (the exporter adds /v1/traces) on the port where Jaeger takes
        OTLP/HTTP, and each replica named by its service.instance.id."""
        services = load_services()
        tested = otlp_environment("http://127.0.0.1:1", "service", "instance")
        jaeger_ports = {str(port).rsplit(":", 1)[1] for port in services["jaeger"]["ports"]}
        for app in APPS:
            env = environment(services[app])
            assert set(tested) == {name for name in env if name.startswith("OTEL_")}, app
            protocol = "OTEL_EXPORTER_OTLP_PROTOCOL"
            assert tested[protocol] == env[protocol] == "http/protobuf"
            endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
            assert ("http", "jaeger", 4318) == (endpoint.scheme, endpoint.hostname, endpoint.port)
            assert endpoint.path in ("", "/"), "a base URL: the exporter adds /v1/traces"
            assert "4318" in jaeger_ports
            assert f"service.instance.id={app}" == env["OTEL_RESOURCE_ATTRIBUTES"]

    def test_replicas_differ_only_by_name(self) -> None:
        """The two replicas have distinct origins but the same cache settings."""
        services = load_services()
        first, second = (environment(services[app]) for app in APPS)
        assert first["COHERENT_CACHE_ORIGIN_PREFIX"] != second["COHERENT_CACHE_ORIGIN_PREFIX"]
        same = {"COHERENT_CACHE_REDIS_URL", "COHERENT_CACHE_NAMESPACE", "OTEL_SERVICE_NAME"}
        assert {k: first[k] for k in same} == {k: second[k] for k in same}


class TestBalancer:
    def test_upstream_servers_are_the_apps(self) -> None:
        """nginx balances over exactly the app services, on the port uvicorn listens on."""
        services = load_services()
        cmd = dockerfile_cmd(dockerfile(services[APPS[0]]))
        port = int(cmd[cmd.index("--port") + 1])
        assert sorted((app, port) for app in APPS) == sorted(nginx_upstreams())

    def test_balancer_mounts_the_config(self) -> None:
        """The balancer runs compose/nginx.conf."""
        volumes = [str(v) for v in load_services()["balancer"]["volumes"]]
        assert any(v.startswith("./nginx.conf:/etc/nginx/nginx.conf") for v in volumes)


class TestImage:
    def test_installs_the_extras_and_server(self) -> None:
        """The image installs the repo with the fastapi and otel extras, uvicorn and the
        OTLP/HTTP exporter."""
        services = load_services()
        text = dockerfile(services[APPS[0]]).read_text()
        joined = text.replace("\\\n", " ")
        install = next(line for line in joined.splitlines() if "pip install" in line)
        words = shlex.split(install)
        assert ".[fastapi,otel]" in words
        assert any(w.startswith("uvicorn") for w in words)
        # The exporter of the protocol the stack configures (http/protobuf).
        assert any(w.startswith("opentelemetry-exporter-otlp-proto-http") for w in words)

    def test_copied_sources_exist(self) -> None:
        """Every file or directory the Dockerfile copies exists in the build context, and
        the context's ignore file lets it through."""
        path = dockerfile(load_services()[APPS[0]])
        ignore = path.with_name(path.name + ".dockerignore").read_text().split()
        for line in path.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: missing"
                    assert f"!{source}" in ignore or f"!{source}/" in ignore, source

    def test_uvicorn_serves_the_example_app(self) -> None:
        """uvicorn serves ``compose/serve.py``'s ``app``: the example FastAPI app."""
        cmd = dockerfile_cmd(dockerfile(load_services()[APPS[0]]))
        assert "uvicorn" == cmd[0]
        module, _, attr = next(word for word in cmd[1:] if ":" in word).partition(":")
        path = (ROOT / Path(*module.split("."))).with_suffix(".py")
        spec = importlib.util.spec_from_file_location("compose_serve", path)
        assert spec is not None
        assert spec.loader is not None
        served = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(served)
        app = getattr(served, attr)
        assert isinstance(app, FastAPI)
        paths = set(app.openapi()["paths"])  # included routers are listed here too
        health = load_services()[APPS[0]]["healthcheck"]["test"][-1]
        probed = re.search(r"http://127\.0\.0\.1:\d+(/[\w/]*)", str(health))
        assert probed is not None
        assert {probed.group(1), "/products/{product_id}"} <= paths

    def test_replicas_share_one_database(self) -> None:
        """Both replicas use one database file on a declared volume, so a write through one
        is read back by the other."""
        document = yaml.safe_load(COMPOSE_FILE.read_text())
        services = load_services()
        urls = {environment(services[app])["DATABASE_URL"] for app in APPS}
        assert 1 == len(urls)
        for app in APPS:
            for volume in services[app]["volumes"]:
                assert str(volume).split(":")[0] in document["volumes"]


class TestPublisher:
    def test_runs_the_example_publisher(self) -> None:
        """The publisher service runs examples/publisher.py as a module (from /app)."""
        command = [str(word) for word in load_services()["publisher"]["command"]]
        module = command[command.index("-m") + 1]
        assert "examples.publisher" == module
        assert (ROOT / "examples" / "publisher.py").is_file()
