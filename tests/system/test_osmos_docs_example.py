"""docs/osmos.md is real: its connector and route, taken from the doc as written, with the
records of its "Send a batch" example, go through `osma-router serve`, a burst worker and
the fake OGSM, and post what the doc says they post."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import httpx

from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import parse_config
from tests.ops_support import Server
from tests.support import ROOT, env_for, osma_router

DOC = ROOT / "docs" / "osmos.md"


def doc_toml() -> str:
    """The doc's routes file: the TOML block with the connector and its route."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    return next(block for block in blocks if "[connectors.crm]" in block and "[[routes]]" in block)


def doc_batch() -> tuple[str, str, bytes, dict[str, object]]:
    """From "Send a batch": the token exported, the curl's URL path and body, and the answer shown."""
    text = DOC.read_text()
    section = text[text.index("### Send a batch") :]
    token = re.search(r"export CRM_OSMOS_TOKEN=(\S+)", section)
    curl = re.search(
        r"curl -i http://127\.0\.0\.1:8000(/ingest/osmos/\w+).*?--data-binary '(.*?)'", section, re.DOTALL
    )
    answer = re.search(r"HTTP/1\.1 202 Accepted\n(\{.*?\})\n", section)
    assert token and curl and answer, "the doc's batch example has changed shape"
    return token.group(1), curl.group(1), curl.group(2).encode(), json.loads(answer.group(1))


def first_of_month() -> str:
    return datetime.now(UTC).date().replace(day=1).isoformat()


def test_the_documented_connector_and_route_post_a_measurement_per_record(
    tmp_path: Path, redis, redis_server, fake_ogsm
) -> None:
    toml = doc_toml()
    token, path, body, answer = doc_batch()
    config = parse_config(
        tomllib.loads(toml), registry=HandlerRegistry.discover(), environ={"CRM_OSMOS_TOKEN": token}
    )
    (route,) = config.routes
    connector = config.connectors[path.rsplit("/", 1)[1]]
    indicator = route.params["indicator_id"]
    fake_ogsm.add_indicator(id=indicator, title="CRM records", aggregation_method="sum")
    routes = tmp_path / "osma-router.toml"
    routes.write_text(toml)
    env = env_for(
        redis_server.url,
        routes,
        CRM_OSMOS_TOKEN=token,
        OSMA_ROUTER_OGSM_BASE_URL=fake_ogsm.base_url,
        OSMA_ROUTER_OGSM_USERNAME=fake_ogsm.username,
        OSMA_ROUTER_OGSM_PASSWORD=fake_ogsm.password,
    )

    before = first_of_month()
    server = Server(env, tmp_path)
    try:
        server.wait_up()

        def send() -> httpx.Response:
            return httpx.post(
                server.url + path,
                content=body,
                headers={connector.header: token, "Content-Type": "application/json"},
                timeout=10,
            )

        response = send()
        assert response.status_code == 202, response.text
        assert response.json() == answer
        worker = osma_router(["worker", "--burst"], env, tmp_path, timeout=120)
        assert worker.returncode == 0, worker.stderr
        reports = fake_ogsm.indicator_reports(indicator)
        records = json.loads(body)
        assert reports, "the documented example posted nothing"
        assert [report["current_value"] for report in reports] == [route.params["value"]] * len(records)
        assert {report["at"] for report in reports} <= {before, first_of_month()}
        # OGSM adds up a "sum" KPI's measurements: the month shows one per record.
        assert sum(report["current_value"] for report in reports) == len(records)

        # The batch sent again (the pipeline run again) is accepted and posts nothing more.
        assert send().json() == answer
        again = osma_router(["worker", "--burst"], env, tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(fake_ogsm.indicator_reports(indicator)) == len(records)
    finally:
        assert server.stop() == 0
