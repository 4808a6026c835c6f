"""The run contract: every command of every system takes the shared options.

A new command must either take them or be listed below with the reason it does not.
"""

import pytest
import typer

from lucidml.cli import app
from lucidml.systems import SYSTEMS

SHARED = ("--out", "--config", "--seed", "--device", "--quiet", "--resume", "--overwrite")
DEMO_SHARED = ("--out", "--quick", "--device", "--quiet", "--overwrite")

# (command, option) -> why that command does without it
EXEMPT = {
    ("editing parse", "--device"): "parsing a dump runs no model",
    ("editing parse", "--seed"): "parsing is deterministic: nothing is drawn at random",
    ("uncertainty zeroshot", "--resume"): "one forward pass over the images, nothing to resume",
    ("feasibility baseline", "--resume"): "one encoder pass over the names, nothing to resume",
    ("feasibility czsl", "--resume"): "small heads train in seconds on precomputed features",
    ("merging merge", "--resume"): "a merge streams once over the tensors and publishes the "
    "folder only when complete; a killed merge leaves nothing to resume",
    ("bias prompts", "--resume"): "reads one prompt file, nothing to resume",
    ("bias prompts", "--config"): "its one input is the prompt file itself",
    ("bias prompts", "--device"): "checks text, runs no model",
    ("bias prompts", "--seed"): "checks text: nothing is drawn at random",
    ("bias analyze", "--resume"): "statistics over stored records in seconds",
    ("sae extract", "--resume"): "one forward pass per image batch; the store is published "
    "only when complete, so a killed extraction leaves nothing to resume",
    ("sae score", "--resume"): "two streaming passes over a store, no training",
    ("sae steer", "--resume"): "forward passes of a few latents x alphas, nothing to resume",
    ("editing import", "--config"): "its only inputs are the released files themselves",
    ("editing import", "--seed"): "converting files draws nothing at random",
    ("editing import", "--device"): "converts JSON records, runs no model",
    ("editing import", "--resume"): "one pass over the released files, nothing to resume",
    ("chunking rnn", "--resume"): "every regime at its paper defaults runs in under a minute "
    "(longest: several_chunks with 30 graft repeats, 47 s wall / 31 s CPU on a busy 2-core box)",
}


def _commands():
    root = typer.main.get_command(app)
    for system in SYSTEMS:
        group = root.commands.get(system.name) if system.built else None
        if group is None:
            continue
        for name, command in group.commands.items():
            yield f"{system.name} {name}", command


COMMANDS = dict(_commands())


def _options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_every_built_system_has_commands_and_a_demo():
    systems = {name.split()[0] for name in COMMANDS}
    assert systems == {s.name for s in SYSTEMS if s.built}
    for system in systems:
        assert f"{system} demo" in COMMANDS, f"lucid {system} has no demo command"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_takes_the_shared_options(name):
    have = _options(COMMANDS[name])
    wanted = DEMO_SHARED if name.endswith(" demo") else SHARED
    missing = [o for o in wanted if o not in have and (name, o) not in EXEMPT]
    assert not missing, f"lucid {name} lacks {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_the_default_of_every_option_with_a_value(name):
    command = COMMANDS[name]
    ctx = command.make_context(name, [], resilient_parsing=True)
    text = command.get_help(ctx)
    for param in command.params:
        if getattr(param, "is_flag", False) or param.required or param.name == "help":
            continue
        shown = param.default is not None or isinstance(getattr(param, "show_default", None), str)
        assert shown, f"lucid {name} --help shows no default for {param.opts[0]}"
    assert "[default:" in text


def test_exemptions_name_real_commands():
    for command, option in EXEMPT:
        assert command in COMMANDS, f"exemption for unknown command {command}"
        assert option in SHARED
