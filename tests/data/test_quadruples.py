"""Quadruple recipe: windows inside the shot, secondary-language choice per variant, errors."""
import numpy as np
import pytest

from avfast.data import Clip, DataError, Variant, plan_quadruple

CLIP = Clip(video="m.mp4", audio={"en": "en.flac", "es": "es.flac", "fr": "fr.flac", "ja": "ja.flac"},
            source="m", start=10.0, end=15.0, separated="sep.flac")


def test_windows_inside_the_shot_and_random():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        p = plan_quadruple(CLIP, Variant.parse("multilingual"), 3.0, rng)
        for w in (p.primary, p.secondary):
            assert 10.0 <= w.start and w.start + w.duration <= 15.0 + 1e-9 and w.duration == 3.0
        starts.add(round(p.primary.start, 3))
        assert p.primary.track == "en" and p.secondary.track in ("es", "fr", "ja")
    assert len(starts) > 40


def test_variants():
    rng = np.random.default_rng(1)
    assert plan_quadruple(CLIP, Variant.parse("monolingual"), 3, rng).secondary.track == "en"
    assert plan_quadruple(CLIP, Variant.parse("bilingual:fr"), 3, rng).secondary.track == "fr"
    no_dub = Clip(video="m.mp4", audio={"en": "en.flac"}, source="m", start=0, end=4)
    assert plan_quadruple(no_dub, Variant.parse("bilingual:fr"), 3, rng).secondary.track == "en"  # paper: if available
    ns = plan_quadruple(CLIP, Variant.parse("no_speech"), 3, rng)
    assert ns.primary.track == "separated" and ns.secondary is None
    ao = Variant.parse("audio_only")
    assert not ao.video and plan_quadruple(CLIP, ao, 3, rng).secondary.track != "en"
    assert Variant.parse("audio_only:monolingual").secondary == "same"
    with pytest.raises(ValueError, match="unknown variant"):
        Variant.parse("bilingual")


def test_multilingual_round_robin_per_batch():
    v = Variant.parse("multilingual:es,fr,ja")
    rng = np.random.default_rng(0)
    assert [plan_quadruple(CLIP, v, 3, rng, step=s).secondary.track for s in range(6)] == ["es", "fr", "ja"] * 2
    two = Clip(video="m.mp4", audio={"en": "a", "fr": "b"}, source="m", start=0, end=4)
    assert {plan_quadruple(two, v, 3, rng, step=s).secondary.track for s in range(3)} == {"fr"}


def test_too_short_shot_and_missing_separated_track():
    short = Clip(video="short.mp4", audio={"en": "a"}, source="m", start=1.0, end=3.5)
    with pytest.raises(DataError, match=r"short.mp4: shot \[1.000, 3.500\) s is 2.500 s, shorter than the 3.0 s window"):
        plan_quadruple(short, Variant.parse("monolingual"), 3.0, np.random.default_rng(0))
    plain = Clip(video="plain.mp4", audio={"en": "a"}, source="m", start=0, end=5)
    with pytest.raises(DataError, match="plain.mp4: variant no_speech needs a separated track"):
        plan_quadruple(plain, Variant.parse("no_speech"), 3.0, np.random.default_rng(0))


def test_primary_language_is_the_configured_one():
    rng = np.random.default_rng(5)
    clip = Clip(video="m.mp4", audio={"es": "es.flac", "en": "en.flac", "fr": "fr.flac"}, source="m", start=0, end=5)
    assert clip.primary == "es"  # the manifest's first track
    for _ in range(10):
        p = plan_quadruple(clip, Variant.parse("multilingual"), 3, rng, primary="en")
        assert p.primary.track == "en" and p.secondary.track in ("es", "fr")
    assert plan_quadruple(clip, Variant.parse("monolingual"), 3, rng, primary="en").secondary.track == "en"
    with pytest.raises(DataError, match="primary language 'de'"):
        plan_quadruple(clip, Variant.parse("multilingual"), 3, rng, primary="de")


def test_dataset_refuses_a_primary_language_no_clip_has():
    from avfast.data import QuadrupleDataset

    clips = [Clip(video="m.mp4", audio={"es": "es.flac"}, source="m", start=0, end=5)]
    with pytest.raises(DataError, match="primary_language"):
        QuadrupleDataset(clips, "monolingual", primary_language="en")
    assert QuadrupleDataset(clips, "monolingual", primary_language="es").primary_language == "es"
