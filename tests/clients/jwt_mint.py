"""Mints JWTs with jwcrypto, a JOSE library independent of the filter's.

    jwt_mint.py keys KEYS.json         new private keys (RSA, P-256, P-384, Ed25519, HMAC)
    jwt_mint.py jwks KEYS.json [NAMES] the public JWKS of those keys (all, or NAMES=a,b)
    jwt_mint.py mint KEYS.json < SPECS one token per line for each JSON spec line
    jwt_mint.py vectors                the policy crate's test vectors (fixed times)

A spec: {"key": "rsa", "alg": "RS256", "kid": "rsa-1" (default: the key's),
"claims": {...}, "header": {...extra}, "tamper": "signature"|"payload",
"unsigned": true (alg none), "hmac_with_public_pem_of": "rsa" (key confusion),
"pad_to": N (an extra claim that makes the token about N bytes)}.
"""
import base64
import json
import sys

from jwcrypto import jwk, jws
from jwcrypto.common import json_encode


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_keys() -> dict:
    keys = {
        "rsa": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-1"),
        "ec256": jwk.JWK.generate(kty="EC", crv="P-256", kid="ec256-1"),
        "ec384": jwk.JWK.generate(kty="EC", crv="P-384", kid="ec384-1"),
        "ed25519": jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="ed-1"),
        "rsa2": jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-2"),
        "hmac": jwk.JWK.generate(kty="oct", size=512, kid="hs-1"),
    }
    return {
        name: json.loads(k.export_symmetric() if name == "hmac" else k.export_private())
        for name, k in keys.items()
    }


def public_jwks(keys: dict, names=None) -> dict:
    out = []
    for name, data in keys.items():
        if data["kty"] == "oct" or (names and name not in names):
            continue
        out.append(json.loads(jwk.JWK(**data).export_public()))
    return {"keys": out}


def mint(keys: dict, spec: dict) -> str:
    header = {"alg": spec.get("alg", "RS256"), "typ": "JWT"}
    key_name = spec.get("key", "rsa")
    if "kid" in spec:
        if spec["kid"] is not None:
            header["kid"] = spec["kid"]
    elif key_name in keys and keys[key_name].get("kid"):
        header["kid"] = keys[key_name]["kid"]
    header.update(spec.get("header", {}))
    claims = dict(spec.get("claims", {}))
    if "pad_to" in spec:
        claims["pad"] = "x" * max(0, int(spec["pad_to"] * 3 / 4))
    payload = json_encode(claims).encode()

    if spec.get("unsigned"):
        header["alg"] = "none"
        return f"{b64(json.dumps(header).encode())}.{b64(payload)}."
    if "hmac_with_public_pem_of" in spec:
        # The classic key-confusion attack: HMAC keyed with the RSA public key.
        pem = jwk.JWK(**keys[spec["hmac_with_public_pem_of"]]).export_to_pem()
        key = jwk.JWK(kty="oct", k=b64(pem))
        header["alg"] = spec.get("alg", "HS256")
        header.pop("kid", None)
    else:
        key = jwk.JWK(**keys[key_name])
    token = jws.JWS(payload)
    token.add_signature(key, alg=header["alg"], protected=json_encode(header))
    compact = token.serialize(compact=True)
    h, p, s = compact.split(".")
    if spec.get("tamper") == "signature":
        sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        sig[len(sig) // 2] ^= 0x01
        s = b64(bytes(sig))
    elif spec.get("tamper") == "payload":
        claims["sub"] = "mallory"
        p = b64(json_encode(claims).encode())
    return f"{h}.{p}.{s}"


VECTOR_NOW = 1_700_000_100
ISS = "https://idp.test"
AUD = "tracegate"


def vectors() -> dict:
    keys = new_keys()
    base = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": 1_700_000_000, "exp": 1_700_003_600}

    def c(**over):
        d = dict(base)
        for k, v in over.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return d

    specs = {
        "rs256": {"key": "rsa", "alg": "RS256", "claims": c(email="alice@example.com", groups=["ml", "sec"])},
        "rs384": {"key": "rsa", "alg": "RS384", "claims": c()},
        "rs512": {"key": "rsa", "alg": "RS512", "claims": c()},
        "ps256": {"key": "rsa", "alg": "PS256", "claims": c()},
        "ps384": {"key": "rsa", "alg": "PS384", "claims": c()},
        "ps512": {"key": "rsa", "alg": "PS512", "claims": c()},
        "es256": {"key": "ec256", "alg": "ES256", "claims": c(scope="openid llm:invoke")},
        "es384": {"key": "ec384", "alg": "ES384", "claims": c()},
        "eddsa": {"key": "ed25519", "alg": "EdDSA", "claims": c()},
        "hs256": {"key": "hmac", "alg": "HS256", "claims": c()},
        "hs512": {"key": "hmac", "alg": "HS512", "claims": c()},
        "aud_list": {"key": "ec256", "alg": "ES256", "claims": c(aud=["other", AUD])},
        "no_kid": {"key": "ec256", "alg": "ES256", "kid": None, "claims": c()},
        "expired": {"key": "ec256", "alg": "ES256", "claims": c(iat=1_699_990_000, exp=1_699_996_000)},
        "expired_within_skew": {"key": "ec256", "alg": "ES256", "claims": c(exp=1_700_000_070)},
        "not_yet_valid": {"key": "ec256", "alg": "ES256", "claims": c(nbf=1_700_001_000)},
        "issued_in_future": {"key": "ec256", "alg": "ES256", "claims": c(iat=1_700_009_000, exp=1_700_019_000)},
        "wrong_issuer": {"key": "ec256", "alg": "ES256", "claims": c(iss="https://evil.test")},
        "no_issuer": {"key": "ec256", "alg": "ES256", "claims": c(iss=None)},
        "wrong_audience": {"key": "ec256", "alg": "ES256", "claims": c(aud="someone-else")},
        "no_audience": {"key": "ec256", "alg": "ES256", "claims": c(aud=None)},
        "no_exp": {"key": "ec256", "alg": "ES256", "claims": c(exp=None)},
        "bad_signature": {"key": "ec256", "alg": "ES256", "claims": c(), "tamper": "signature"},
        "tampered_payload": {"key": "rsa", "alg": "RS256", "claims": c(), "tamper": "payload"},
        "alg_none": {"unsigned": True, "claims": c()},
        "key_confusion": {"hmac_with_public_pem_of": "rsa", "claims": c()},
        "unknown_kid": {"key": "rsa2", "alg": "RS256", "claims": c()},
        "kid_of_other_key": {"key": "rsa2", "alg": "RS256", "kid": "rsa-1", "claims": c()},
        "groups_other": {"key": "ec256", "alg": "ES256", "claims": c(groups=["finance"])},
        "nested_claim": {"key": "ec256", "alg": "ES256", "claims": c(realm={"roles": ["admin"]}, tier=3)},
    }
    tokens = {name: mint(keys, spec) for name, spec in specs.items()}
    hmac = keys["hmac"]["k"]
    return {
        "now": VECTOR_NOW,
        "issuer": ISS,
        "audience": AUD,
        "jwks": public_jwks(keys, {"rsa", "ec256", "ec384", "ed25519"}),
        "jwks_rotated": public_jwks(keys, {"rsa2", "ec256"}),
        "hmac_secret_base64": base64.b64encode(base64.urlsafe_b64decode(hmac + "=" * (-len(hmac) % 4))).decode(),
        "tokens": tokens,
    }


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "keys":
        with open(sys.argv[2], "w") as f:
            json.dump(new_keys(), f)
    elif cmd == "jwks":
        keys = json.load(open(sys.argv[2]))
        names = set(sys.argv[3].split(",")) if len(sys.argv) > 3 and sys.argv[3] else None
        print(json.dumps(public_jwks(keys, names)))
    elif cmd == "mint":
        keys = json.load(open(sys.argv[2]))
        for line in sys.stdin:
            if line.strip():
                print(mint(keys, json.loads(line)), flush=True)
    elif cmd == "vectors":
        print(json.dumps(vectors(), indent=1))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
