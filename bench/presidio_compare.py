"""tracegate's detectors next to Microsoft Presidio on one labelled corpus.

Generates a corpus with Faker (seeded): prose with e-mail addresses, phone
numbers, payment cards, IBANs, US SSNs and IP addresses at known places. Runs
tracegate (the `detect_corpus` example: the filter's own detectors and
masking, natively) and Presidio (presidio-analyzer's pattern recognizers, with
a spaCy blank English tokenizer since no NER model is needed for these
entities, plus presidio-anonymizer) over it, and prints recall per entity, how
often the two agree, findings outside the labels, and throughput.

usage: presidio_compare.py DETECT_CORPUS_BINARY OUT_DIR [--docs N]
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import spacy
import tldextract
import tldextract.tldextract
from faker import Faker
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from presidio_anonymizer import AnonymizerEngine

LABELS = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP"]
TRACEGATE = {
    "email": "EMAIL",
    "phone": "PHONE",
    "payment_card": "CREDIT_CARD",
    "iban": "IBAN",
    "us_ssn": "US_SSN",
    "ipv4": "IP",
    "ipv6": "IP",
}
PRESIDIO = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP",
}
TEMPLATES = {
    "EMAIL": ["Please send the report to {} before noon.", "Reply to {} with the logs."],
    "PHONE": ["Call me at {} if the deploy fails.", "The on-call number is {} this week."],
    "CREDIT_CARD": ["The card {} was declined twice.", "Charge it to {} please."],
    "IBAN": ["Wire the refund to {} by Friday.", "Our account is {} at the main bank."],
    "US_SSN": ["Her SSN is {} according to the form.", "SSN on file: {}."],
    "IP": ["The host {} stopped answering.", "Block traffic from {} at the firewall."],
}


class BlankSpacyEngine(NlpEngine):
    """Tokenization only (spaCy's blank English pipeline): pattern
    recognizers need tokens for context words, not a trained model."""

    def __init__(self):
        self.nlp = spacy.blank("en")

    def load(self):
        pass

    def is_loaded(self):
        return True

    def get_supported_languages(self):
        return ["en"]

    def get_supported_entities(self):
        return []

    def process_text(self, text, language):
        doc = self.nlp(text)
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.text.lower() for t in doc],
            nlp_engine=self,
            language=language,
        )

    def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word, language):
        return False

    def is_punct(self, word, language):
        return not word.isalnum()


def value(fake, label):
    return {
        "EMAIL": fake.email,
        "PHONE": fake.phone_number,
        "CREDIT_CARD": fake.credit_card_number,
        "IBAN": fake.iban,
        "US_SSN": fake.ssn,
        "IP": fake.ipv4,
    }[label]()


def corpus(n):
    fake = Faker("en_US")
    Faker.seed(20261125)
    docs = []
    for i in range(n):
        text, spans = "", []
        for j in range(3):
            text += fake.paragraph(nb_sentences=2) + " "
            label = LABELS[(i * 3 + j) % len(LABELS)]
            template = TEMPLATES[label][(i + j) % 2]
            v = value(fake, label)
            before, _ = template.split("{}")
            start = len(text) + len(before)
            text += template.format(v) + " "
            spans.append([label, start, start + len(v)])
        docs.append({"text": text, "entities": spans})
    return docs


def overlaps(a, b):
    return a[1] < b[2] and b[1] < a[2]


def score(docs, findings):
    """Recall per label, the per-entity hit list, and findings outside labels."""
    hits = []
    extra = 0
    for doc, found in zip(docs, findings):
        for e in doc["entities"]:
            hits.append((e[0], any(f[0] == e[0] and overlaps(f, e) for f in found)))
        for f in found:
            if not any(f[0] == e[0] and overlaps(f, e) for e in doc["entities"]):
                extra += 1
    recall = {}
    for label in LABELS:
        mine = [h for l, h in hits if l == label]
        recall[label] = sum(mine) / len(mine) if mine else 0.0
    overall = sum(h for _, h in hits) / len(hits)
    return recall, overall, [h for _, h in hits], extra


def offline_tldextract():
    """Presidio's e-mail recognizer checks domains with tldextract, which
    fetches the public suffix list from the internet first; use the copy
    shipped in the package instead (and never wait on the network)."""
    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.tldextract.TLD_EXTRACTOR = extractor
    tldextract.extract = extractor


def main():
    offline_tldextract()
    binary, out_dir = sys.argv[1], Path(sys.argv[2])
    n = int(sys.argv[sys.argv.index("--docs") + 1]) if "--docs" in sys.argv else 1500
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = corpus(n)
    path = out_dir / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in docs))
    size = sum(len(d["text"].encode()) for d in docs)

    lines = subprocess.run(
        [binary, str(path)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    tg_timing = json.loads(lines[-1])
    tg_findings = [
        [[TRACEGATE[d], s, e] for d, s, e in json.loads(l)["findings"] if d in TRACEGATE]
        for l in lines[:-1]
    ]

    analyzer = AnalyzerEngine(
        nlp_engine=BlankSpacyEngine(),
        registry=RecognizerRegistry(),
        supported_languages=["en"],
    )
    analyzer.registry.load_predefined_recognizers(languages=["en"])
    anonymizer = AnonymizerEngine()
    entities = list(PRESIDIO)
    pr_findings = []
    start = time.perf_counter()
    for d in docs:
        results = analyzer.analyze(text=d["text"], language="en", entities=entities)
        anonymizer.anonymize(text=d["text"], analyzer_results=results)
        pr_findings.append([[PRESIDIO[r.entity_type], r.start, r.end] for r in results])
    pr_seconds = time.perf_counter() - start

    tg_recall, tg_all, tg_hits, tg_extra = score(docs, tg_findings)
    pr_recall, pr_all, pr_hits, pr_extra = score(docs, pr_findings)
    agree = sum(a == b for a, b in zip(tg_hits, pr_hits)) / len(tg_hits)
    tg_mbs = size / tg_timing["seconds"] / 1e6
    pr_mbs = size / pr_seconds / 1e6

    print(f"# Detectors on a labelled corpus: {n} documents, {size / 1e6:.2f} MB, "
          f"{len(tg_hits)} labelled entities (Faker, seeded)")
    print()
    print("| entity | tracegate recall | Presidio recall |")
    print("|---|---:|---:|")
    for label in LABELS:
        print(f"| {label} | {tg_recall[label]:.1%} | {pr_recall[label]:.1%} |")
    print(f"| all | {tg_all:.1%} | {pr_all:.1%} |")
    print()
    print("| | tracegate (native) | Presidio (pattern recognizers) |")
    print("|---|---:|---:|")
    print(f"| detect + mask, MB/s | {tg_mbs:.1f} | {pr_mbs:.2f} |")
    print(f"| findings outside the labels | {tg_extra} | {pr_extra} |")
    print()
    print(f"The two agree (both find or both miss) on {agree:.1%} of labelled entities; "
          f"tracegate is {tg_mbs / pr_mbs:.0f}x faster here.")
    (out_dir / "presidio.json").write_text(json.dumps({
        "documents": n, "bytes": size, "entities": len(tg_hits),
        "tracegate": {"recall": tg_recall, "recall_all": tg_all, "extra": tg_extra,
                      "mb_per_s": tg_mbs},
        "presidio": {"recall": pr_recall, "recall_all": pr_all, "extra": pr_extra,
                     "mb_per_s": pr_mbs},
        "agreement": agree,
    }, indent=2))


if __name__ == "__main__":
    main()
