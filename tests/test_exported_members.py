"""The plugin API is what `receiver/__init__.py` exports, and nothing else: a team's
plugin (and the built-in handlers) import only these names. Changing the list is a
change of the public API, made on purpose here."""

from __future__ import annotations

import receiver
import receiver.testing
from receiver.exceptions import HandlerFailed, RouterError

PLUGIN_API = [
    "ConfigError",
    "Context",
    "Effect",
    "EffectOutcome",
    "EffectResult",
    "EffectsLedger",
    "Event",
    "HandlerError",
    "HandlerGroup",
    "InvalidRequest",
    "PayloadError",
    "PermanentError",
    "RateLimited",
    "Rejected",
    "RouterError",
    "Unavailable",
    "UpstreamError",
    "VerificationError",
    "Watermarks",
    "parse_time",
    "validate_metadata",
]


def test_all_is_the_pinned_plugin_api():
    assert sorted(receiver.__all__) == sorted(PLUGIN_API)


def test_every_exported_name_exists_and_is_documented():
    for name in receiver.__all__:
        member = getattr(receiver, name)
        if name != "EffectResult":  # a type alias: dict[str, Any]
            assert member.__doc__, f"receiver.{name} has no docstring"


def test_no_public_name_is_exported_by_accident():
    public = {name for name in vars(receiver) if not name.startswith("_")}
    # Subpackages show up as attributes once imported; they are not the API.
    modules = {name for name in public if type(getattr(receiver, name)).__name__ == "module"}
    assert public - modules == set(PLUGIN_API)


def test_the_test_kit_exports_what_deliver_answers_and_raises():
    for name in ("Delivery", "JobRun", "JobError", "HandlerFailed", "task_event", "FakeOgsm", "FakeOsma"):
        assert name in receiver.testing.__all__, name
        assert getattr(receiver.testing, name).__doc__, f"receiver.testing.{name} has no docstring"
    assert receiver.testing.HandlerFailed is HandlerFailed and issubclass(HandlerFailed, RouterError)
