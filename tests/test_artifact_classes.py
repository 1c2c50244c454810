"""storage.artifact_classes is the one table of artifact SOP classes: what storage.artifacts makes
is in it, with the media type that comes back, and every reader decides by it."""

from storage import artifact_classes as ac
from storage import artifacts
from storage.artifacts import audio, image, pdf, text_sr, video


def test_every_class_storage_artifacts_makes_is_in_the_table():
    made = {pdf.ENCAPSULATED_PDF_STORAGE: "application/pdf", image.VL_PHOTOGRAPHIC_IMAGE_STORAGE: "image/jpeg",
            video.VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE: "video/mp4",
            audio.GENERAL_AUDIO_WAVEFORM_STORAGE: "audio/wav", text_sr.BASIC_TEXT_SR_STORAGE: "text/plain"}
    assert {uid: ac.ARTIFACT_CLASSES[uid].media_type for uid in made} == made
    assert frozenset(made) == ac.WITH_ORIGINAL
    assert artifacts.SUPPORTED_MEDIA_TYPES  # the package the table describes is importable


def test_derived_views():
    assert set(ac.NOT_IMAGES) == ac.WITH_ORIGINAL - {image.VL_PHOTOGRAPHIC_IMAGE_STORAGE}
    assert ac.DOCUMENTS == {pdf.ENCAPSULATED_PDF_STORAGE: "Encapsulated PDF",
                            "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA"}
    assert video.VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE in ac.VIDEO_CLASSES
    assert image.VL_PHOTOGRAPHIC_IMAGE_STORAGE in ac.VL_PHOTO_CLASSES
