"""Routes file and handler plugins: matching, keys, retries, validation, job ids."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.exceptions import ConfigError
from receiver.model.events import Event, build_event
from receiver.model.plugins import HandlerGroup, HandlerRegistry
from receiver.model.routes import Config, Route, RouteTable, job_id, load_config, parse_config
from tests.support import examples

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JOB_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ReportParams:
    indicator_id: int
    value: str = "count"

    def __post_init__(self) -> None:
        if not isinstance(self.indicator_id, int) or isinstance(self.indicator_id, bool):
            raise TypeError("indicator_id must be a whole number")
        if self.indicator_id <= 0:
            raise ValueError("indicator_id must be positive")


def make_group() -> HandlerGroup:
    group = HandlerGroup("care")

    @group.on("task.completed")
    def notify(event: Event, ctx: Any) -> None:
        pass

    # The docstring of `HandlerGroup.on` promises a dataclass works; its type hint disagrees.
    @group.handler(params=ReportParams)  # type: ignore[arg-type]
    def report(event: Event, ctx: Any) -> None:
        pass

    return group


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry([make_group()])


def config(text: str, registry: HandlerRegistry | None = None) -> Config:
    return parse_config(tomllib.loads(text), registry=registry)


def router(text: str, registry: HandlerRegistry | None = None) -> RouteTable:
    return RouteTable(config(text, registry).routes)


def event(event_type: str, obj: dict[str, Any] | None = None, event_id: str = "evt_1") -> Event:
    payload = {"id": event_id, "type": event_type, "data": {"object": obj or {}}}
    return build_event(payload, source="osma", received_at=RECEIVED)


def matched(r: RouteTable, e: Event) -> list[int]:
    return [route.index for route in r.match(e.type, e.object)]


def route_error(text: str, registry: HandlerRegistry | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        config(text, registry)
    return str(caught.value)


# --- on -----------------------------------------------------------------------------------

ON_TABLE = """
[[routes]]
on = "task.completed"
handler = "a"
[[routes]]
on = "task.*"
handler = "b"
[[routes]]
on = "*"
handler = "c"
[[routes]]
on = ["member.created", "task.deleted"]
handler = "d"
"""


@pytest.mark.parametrize(
    "event_type, expected",
    [
        ("task.completed", [0, 1, 2]),
        ("task.updated", [1, 2]),
        ("task.deleted", [1, 2, 3]),
        ("member.created", [2, 3]),
        ("member.updated", [2]),
        ("task", [2]),
        ("taskx.completed", [2]),
        ("osmos.crm.record", [2]),
        ("never.seen.before", [2]),
    ],
)
def test_on_exact_prefix_star_and_list(event_type: str, expected: list[int]) -> None:
    assert matched(router(ON_TABLE), event(event_type)) == expected


def test_exact_on_does_not_match_by_prefix() -> None:
    r = router('[[routes]]\non = "task.completed"\nhandler = "a"')
    assert matched(r, event("task.completed.extra")) == []
    assert matched(r, event("task.complete")) == []


# --- where --------------------------------------------------------------------------------


def test_where_is_equality_on_data_object() -> None:
    r = router('[[routes]]\non = "*"\nwhere = { template = "update_blood_pressure" }\nhandler = "a"')
    assert matched(r, event("task.completed", {"template": "update_blood_pressure"})) == [0]
    assert matched(r, event("task.completed", {"template": "other"})) == []
    assert matched(r, event("task.completed", {})) == []


def test_where_is_not_relative_to_the_envelope() -> None:
    r = router('[[routes]]\non = "*"\nwhere = { type = "task.completed" }\nhandler = "a"')
    assert matched(r, event("task.completed", {})) == []
    assert matched(r, event("task.completed", {"type": "task.completed"})) == [0]


def test_where_with_several_fields_needs_all() -> None:
    r = router('[[routes]]\non = "*"\nwhere = { a = 1, b = "x" }\nhandler = "h"')
    assert matched(r, event("t", {"a": 1, "b": "x"})) == [0]
    assert matched(r, event("t", {"a": 1, "b": "y"})) == []
    assert matched(r, event("t", {"a": 1})) == []


def test_where_quoted_dotted_path_descends_into_objects() -> None:
    r = router('[[routes]]\non = "*"\nwhere = { "data.score" = 5 }\nhandler = "h"')
    assert matched(r, event("t", {"data": {"score": 5, "other": 1}})) == [0]
    assert matched(r, event("t", {"data": {"score": 6}})) == []
    assert matched(r, event("t", {"data": 5})) == []
    assert matched(r, event("t", {"data.score": 5})) == []
    assert matched(r, event("t", {})) == []


def test_where_deep_dotted_path() -> None:
    r = router('[[routes]]\non = "*"\nwhere = { "a.b.c" = "x" }\nhandler = "h"')
    assert matched(r, event("t", {"a": {"b": {"c": "x"}}})) == [0]
    assert matched(r, event("t", {"a": {"b": {"c": "y"}}})) == []
    assert matched(r, event("t", {"a": {"b": None}})) == []


def test_where_unquoted_toml_dotted_key_is_not_silently_dead() -> None:
    """`where = { data.score = 5 }` is TOML for a nested table; the contract says dotted paths
    descend into objects, so the route must either match by descending or refuse to load,
    not load and then never match an object that has other fields beside `score`."""
    text = '[[routes]]\non = "*"\nwhere = { data.score = 5 }\nhandler = "h"'
    try:
        r = router(text)
    except ConfigError:
        return
    assert matched(r, event("t", {"data": {"score": 5, "other": 1}})) == [0]


@pytest.mark.parametrize(
    "toml_value, actual, matches",
    [
        ("true", True, True),
        ("true", 1, False),
        ("false", 0, False),
        ("1", True, False),
        ("0", False, False),
        ("1", 1, True),
        ('"1"', 1, False),
        ("1", "1", False),
        ("false", False, True),
    ],
)
def test_where_bool_and_int_are_strict(toml_value: str, actual: Any, matches: bool) -> None:
    r = router(f'[[routes]]\non = "*"\nwhere = {{ flag = {toml_value} }}\nhandler = "h"')
    assert matched(r, event("t", {"flag": actual})) == ([0] if matches else [])


# --- order and keys -----------------------------------------------------------------------


def test_routes_keep_file_order_across_exact_and_pattern_routes() -> None:
    text = """
[[routes]]
on = "*"
handler = "first"
[[routes]]
on = "task.completed"
handler = "second"
[[routes]]
on = "task.*"
handler = "third"
[[routes]]
on = "task.completed"
handler = "fourth"
"""
    r = router(text)
    assert [route.handler for route in r.match("task.completed", {})] == [
        "first",
        "second",
        "third",
        "fourth",
    ]
    # asked twice (cached) the answer is the same
    assert [route.handler for route in r.match("task.completed", {})] == [
        "first",
        "second",
        "third",
        "fourth",
    ]


def test_identical_route_tables_are_two_routes_with_distinct_keys() -> None:
    table = '[[routes]]\non = "task.completed"\nhandler = "h"\nindicator_id = 1\n'
    routes = config(table * 3).routes
    assert len({route.key for route in routes}) == 3
    r = RouteTable(routes)
    assert len(r.match("task.completed", {})) == 3
    ids = {job_id("osma", "evt_1", route) for route in routes}
    assert len(ids) == 3


def test_route_keys_are_stable_across_loads(tmp_path: Path) -> None:
    text = """
[[routes]]
on = "task.completed"
where = { template = "x" }
handler = "h"
indicator_id = 456
[[routes]]
on = "task.completed"
handler = "h"
indicator_id = 456
[[routes]]
on = "task.completed"
handler = "h"
indicator_id = 456
"""
    path = tmp_path / "routes.toml"
    path.write_text(text)
    first = [route.key for route in load_config(path).routes]
    second = [route.key for route in load_config(path).routes]
    assert first == second == [route.key for route in config(text).routes]
    assert all(JOB_ID.fullmatch(key) for key in first)


def test_route_key_depends_on_content_not_on_position_or_key_order() -> None:
    a = '[[routes]]\non = "task.completed"\nhandler = "h"\nindicator_id = 1\n'
    a_reordered = '[[routes]]\nindicator_id = 1\nhandler = "h"\non = "task.completed"\n'
    other = '[[routes]]\non = "member.created"\nhandler = "g"\n'
    alone = config(a).routes[0].key
    assert config(a_reordered).routes[0].key == alone
    assert config(other + a).routes[1].key == alone


def test_different_parameters_give_different_keys() -> None:
    base = '[[routes]]\non = "task.completed"\nhandler = "h"\nindicator_id = {}\n'
    routes = config(base.format(1) + base.format(2)).routes
    assert routes[0].key != routes[1].key


# --- retries ------------------------------------------------------------------------------


def test_retry_intervals_repeat_the_last_backoff_value() -> None:
    route = config('[[routes]]\non = "*"\nhandler = "h"\nretries = 6\nbackoff = [5, 30]').routes[0]
    assert route.retry_intervals() == [5, 30, 30, 30, 30, 30]


@pytest.mark.parametrize(
    "retries, backoff, expected",
    [
        (0, "[5, 30]", []),
        (2, "[5, 30, 120, 600]", [5, 30]),
        (4, "[5, 30, 120, 600]", [5, 30, 120, 600]),
        (3, "10", [10, 10, 10]),
        (1, "[0]", [0]),
    ],
)
def test_retry_intervals(retries: int, backoff: str, expected: list[int]) -> None:
    text = f'[[routes]]\non = "*"\nhandler = "h"\nretries = {retries}\nbackoff = {backoff}'
    assert config(text).routes[0].retry_intervals() == expected


def test_default_retry_policy_is_five_attempts_first_retry_within_five_seconds() -> None:
    route = config('[[routes]]\non = "*"\nhandler = "h"').routes[0]
    intervals = route.retry_intervals()
    assert len(intervals) + 1 == 5
    assert intervals[0] <= 5
    assert intervals == sorted(intervals) and intervals[-1] > intervals[0]


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, mentions",
    [
        ('on = "*"', "handler"),
        ('on = "*"\nhandler = ""', "handler"),
        ('on = "*"\nhandler = 5', "handler"),
        ('handler = "h"', "on"),
        ('on = []\nhandler = "h"', "on"),
        ('on = 5\nhandler = "h"', "on"),
        ('on = ""\nhandler = "h"', "on"),
        ('on = "task*"\nhandler = "h"', "on"),
        ('on = "*"\nhandler = "h"\nwhere = 5', "where"),
        ('on = "*"\nhandler = "h"\nretries = -1', "retries"),
        ('on = "*"\nhandler = "h"\nretries = 101', "retries"),
        ('on = "*"\nhandler = "h"\nretries = "3"', "retries"),
        ('on = "*"\nhandler = "h"\nretries = true', "retries"),
        ('on = "*"\nhandler = "h"\nretries = 2.5', "retries"),
        ('on = "*"\nhandler = "h"\nbackoff = []', "backoff"),
        ('on = "*"\nhandler = "h"\nbackoff = "5"', "backoff"),
        ('on = "*"\nhandler = "h"\nbackoff = [-1]', "backoff"),
        ('on = "*"\nhandler = "h"\nbackoff = [true]', "backoff"),
        ('on = "*"\nhandler = "h"\nbackoff = [5, "30"]', "backoff"),
        ('on = "*"\nhandler = "h"\nqueue = "high.priority"', "queue"),
        ('on = "*"\nhandler = "h"\nqueue = "a:b"', "queue"),
        ('on = "*"\nhandler = "h"\nqueue = ""', "queue"),
        ('on = "*"\nhandler = "h"\nqueue = 3', "queue"),
    ],
)
def test_bad_route_is_a_config_error_naming_route_and_key(table: str, mentions: str) -> None:
    message = route_error('[[routes]]\non = "*"\nhandler = "ok"\n[[routes]]\n' + table)
    assert "#2" in message
    assert mentions in message


def test_unknown_top_level_table_is_refused() -> None:
    assert "rutes" in route_error('[[rutes]]\non = "*"\nhandler = "h"')


def test_unknown_handler_names_the_file_and_route_number(tmp_path: Path, registry: HandlerRegistry) -> None:
    path = tmp_path / "osma-router.toml"
    path.write_text(
        '[[routes]]\non = "*"\nhandler = "care.notify"\n[[routes]]\non = "*"\nhandler = "care.nope"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    message = str(caught.value)
    assert str(path) in message
    assert "#2" in message
    assert "care.nope" in message


def test_unreadable_or_invalid_routes_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[routes]\non = ")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="absent.toml"):
        load_config(tmp_path / "absent.toml")


def test_missing_on_falls_back_to_the_handlers_event_types(registry: HandlerRegistry) -> None:
    route = config('[[routes]]\nhandler = "care.notify"', registry).routes[0]
    assert route.on == ("task.completed",)


def test_missing_on_without_handler_default_is_an_error(registry: HandlerRegistry) -> None:
    message = route_error('[[routes]]\nhandler = "care.report"\nindicator_id = 1', registry)
    assert "#1" in message and "on" in message


def test_handler_params_dataclass_accepts_good_parameters(registry: HandlerRegistry) -> None:
    route = config('[[routes]]\non = "*"\nhandler = "care.report"\nindicator_id = 456', registry).routes[0]
    assert dict(route.params) == {"indicator_id": 456}
    assert registry.get("care.report").check_params(route.params) == ReportParams(indicator_id=456)


@pytest.mark.parametrize(
    "params",
    [
        'indicator_id = "abc"',  # the dataclass' TypeError
        "indicator_id = true",
        "indicator_id = 0",  # the dataclass' ValueError
        "",  # a required parameter is missing
        "indicator_id = 1\ncolour = 'blue'",  # unknown parameter
    ],
)
def test_bad_handler_parameter_is_a_config_error(
    registry: HandlerRegistry, params: str, tmp_path: Path
) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(f'[[routes]]\non = "*"\nhandler = "care.report"\n{params}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    message = str(caught.value)
    assert str(path) in message and "#1" in message and "care.report" in message


def test_reserved_keys_are_not_handler_parameters() -> None:
    route = config(
        '[[routes]]\non = "*"\nhandler = "h"\nretries = 1\nbackoff = [2]\nqueue = "q"\ntimeout = 9\nx = 1'
    ).routes[0]
    assert dict(route.params) == {"x": 1}
    assert (route.retries, route.backoff, route.queue, route.timeout) == (1, (2.0,), "q", 9)


# --- plugins ------------------------------------------------------------------------------


def test_handler_group_namespacing() -> None:
    group = make_group()
    assert set(group.handlers) == {"care.notify", "care.report"}
    assert group.handlers["care.notify"].event_types == ("task.completed",)

    plain = HandlerGroup()

    @plain.on("*", name="noop")
    def whatever(event: Event, ctx: Any) -> None:
        pass

    assert set(plain.handlers) == {"noop"}


def test_handler_name_override_is_namespaced() -> None:
    group = HandlerGroup("care")

    @group.handler("send")
    def send_reminder(event: Event, ctx: Any) -> None:
        pass

    assert set(group.handlers) == {"care.send"}


def test_duplicate_registration_in_a_group_is_a_config_error() -> None:
    group = make_group()
    with pytest.raises(ConfigError, match="care.notify"):

        @group.on("task.created")
        def notify(event: Event, ctx: Any) -> None:
            pass


def test_two_plugins_registering_the_same_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="care.notify"):
        HandlerRegistry([make_group(), make_group()])


def test_adding_the_same_group_twice_is_harmless() -> None:
    group = make_group()
    registry = HandlerRegistry([group, group])
    assert "care.notify" in registry


def test_unknown_handler_lists_the_known_ones(registry: HandlerRegistry) -> None:
    with pytest.raises(ConfigError) as caught:
        registry.get("care.nope")
    assert "care.nope" in str(caught.value) and "care.notify" in str(caught.value)


def test_async_handlers_are_recognised() -> None:
    group = HandlerGroup("x")

    @group.on("*")
    async def later(event: Event, ctx: Any) -> None:
        pass

    assert group.handlers["x.later"].is_async


# --- job ids ------------------------------------------------------------------------------


def a_route() -> Route:
    return config('[[routes]]\non = "*"\nhandler = "h"\nindicator_id = 1').routes[0]


@pytest.mark.parametrize(
    "event_id",
    ["evt_1", "evt:1", "evt.1", "", "a" * 500, "ünïcødé", "../../etc", "evt 1\n", "x" * 101],
)
def test_job_id_is_safe_and_deterministic(event_id: str) -> None:
    route = a_route()
    first = job_id("osma", event_id, route)
    assert JOB_ID.fullmatch(first), first
    assert first == job_id("osma", event_id, a_route())


@settings(max_examples=examples(300), deadline=None)
@given(event_id=st.text(max_size=300))
def test_property_job_id_uses_only_safe_characters(event_id: str) -> None:
    route = a_route()
    assert JOB_ID.fullmatch(job_id("osma", event_id, route))
    assert job_id("osma", event_id, route) == job_id("osma", event_id, route)


@settings(max_examples=examples(300), deadline=None)
@given(first=st.text(max_size=120), second=st.text(max_size=120))
def test_property_distinct_event_ids_give_distinct_job_ids(first: str, second: str) -> None:
    route = a_route()
    if first != second:
        assert job_id("osma", first, route) != job_id("osma", second, route)


def test_job_id_differs_by_source_and_route() -> None:
    routes = config(
        '[[routes]]\non = "*"\nhandler = "h"\nindicator_id = 1\n'
        '[[routes]]\non = "*"\nhandler = "h"\nindicator_id = 2\n'
    ).routes
    assert job_id("osma", "evt_1", routes[0]) != job_id("osma", "evt_1", routes[1])
    assert job_id("osma", "evt_1", routes[0]) != job_id("osmos", "evt_1", routes[0])
