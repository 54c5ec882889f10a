"""The main job's checks that its samples look like the chorales (the job itself is `make demo`, minutes long)."""

from hf_music_xl.demo import CHECKS, DEMO_STEPS, DemoSettings, look_like_the_chorales


def summary(polyphony, entropy, density):
    values = {"polyphony": polyphony, "pitch_class_entropy": entropy, "note_density": density}
    return {name: {"mean": value, "std": 0.0} for name, value in values.items()}


def test_checks_compare_each_figure_with_its_allowance():
    chorales = summary(3.9, 3.0, 16.0)
    close = look_like_the_chorales(chorales, summary(4.8, 3.2, 20.0), 1.20)
    assert all(check["within"] for check in close.values())
    assert close["note_density"]["value"] == 0.25 and abs(close["polyphony"]["value"] - 0.9) < 1e-9
    off = look_like_the_chorales(chorales, summary(8.6, 3.30, 32.0), 1.76)  # the clusters of a load-starved run
    assert {name for name, check in off.items() if not check["within"]} == {
        "polyphony",
        "pitch_class_entropy",
        "note_density",
        "validation_nll_per_token",
    }
    assert set(close) == {name for name, _, _ in CHECKS} | {"validation_nll_per_token"}


def test_the_demo_trains_a_fixed_number_of_steps_by_default():
    settings = DemoSettings()
    assert settings.steps == DEMO_STEPS and settings.max_minutes == 0  # no budget: the same work on any machine
