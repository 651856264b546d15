import pytest

from sabr import ConfigError, cli


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
    from sabr.app_config import ElevatorSettings, RecognizeSettings
    from sabr.config import RunConfig

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


def test_run_config_command_reads_back_into_the_same_config():
    import shlex

    from sabr.config import RunConfig

    cfg = RunConfig(data="/data/my folder", model="lenet5", train_per_class=100, scale_teta1=False, bn_recalibrate=False,
                    sweep=[0.1, 0.5], lr_sabr=3e-4, max_drop=0.02, seed=2, base_checkpoint="b.safetensors",
                    fast_start=1.5)
    line = cfg.command()
    assert line.startswith("sabr run --data '/data/my folder' --model lenet5 --train-per-class 100")
    assert "--no-scale-teta1" in line and "--epochs-base" not in line  # defaults are left out
    assert "--fast-start 1.5" in line
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert RunConfig(**cli._given(args, RunConfig)) == cfg
    assert RunConfig().command() == "sabr run"
    with pytest.raises(ConfigError, match="max_drop=None has no flag"):
        RunConfig(max_drop=None).command()
