import pytest

from sabr import cli


def test_missing_optional_package_names_the_extra(monkeypatch, capsys):
    def needs_cv2(args):
        raise ModuleNotFoundError("No module named 'cv2'", name="cv2")

    monkeypatch.setitem(cli.COMMANDS, "models", ("list", cli._setup_models, needs_cv2))
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'torch-sabr[apps]'" in err and "Traceback" not in err


def test_unrelated_missing_module_is_not_hidden(monkeypatch):
    def broken(args):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setitem(cli.COMMANDS, "models", ("list", cli._setup_models, broken))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["models"])


def test_every_command_has_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
    assert "--teta1" in capsys.readouterr().out


def test_flags_come_from_the_dataclasses():
    from sabr.config import ElevatorSettings, RecognizeSettings, RunConfig

    parser = cli.build_parser()
    args = parser.parse_args(["elevator", "--script", "s.txt", "--floors", "3", "--headless", "--stable-frames", "4"])
    assert ElevatorSettings(**cli._given(args, ElevatorSettings)) == \
        ElevatorSettings(script="s.txt", floors=3, headless=True, stable_frames=4)
    args = parser.parse_args(["recognize", "--model", "m", "--source", "0"])
    assert RecognizeSettings(**cli._given(args, RecognizeSettings)) == RecognizeSettings(model="m", source="0")
    with pytest.raises(SystemExit):
        parser.parse_args(["recognize", "--source", "0"])  # --model is required
    args = parser.parse_args(["prune", "--run", "r"])
    assert args.teta1 == RunConfig().sweep and args.gamma == RunConfig().gamma
