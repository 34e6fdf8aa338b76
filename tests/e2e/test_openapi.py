"""`/api/openapi.json` is valid OpenAPI 3 and true to the server: a real validator
(openapi-spec-validator) finds nothing wrong with it, and schemathesis, generating requests from it
and checking every answer against it with all of its checks, finds no failure.

The schemathesis run is bounded (a fixed number of cases per operation, a fixed seed, one worker)
so that it takes seconds and a failure reproduces. Its checks include, among others: every
status, content type and body the server answers is documented (`status_code_conformance`,
`content_type_conformance`, `response_schema_conformance`); requests the schema calls valid are
accepted and requests it calls invalid are refused (`positive_data_acceptance`,
`negative_data_rejection`); operations that declare a bearer token refuse requests without one or
with a wrong one (`ignored_auth`, `missing_required_header`); a method a path does not take
answers 405 with an `Allow` header (`unsupported_method`); and, following links between
operations, a created appointment can be read back (`ensure_resource_availability`).
"""

import os
import subprocess
import sys

import harness as h
from openapi_spec_validator import OpenAPIV31SpecValidator


async def test_the_description_validates_as_openapi_3_1(server):
    status, doc = await h.api(server, "GET", "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == [], "\n".join(errors)


async def test_the_description_documents_errors_and_auth(server):
    """What a client reads before it calls: each operation that takes a token says it may answer
    401, and every error it documents has the `{"error":{"code","message"}}` body."""
    _, doc = await h.api(server, "GET", "/api/openapi.json")
    components = doc["components"]
    assert components["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    secured = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = {
                code: components["responses"][r["$ref"].rsplit("/", 1)[1]] if "$ref" in r else r
                for code, r in op["responses"].items()
            }
            if op.get("security"):
                secured += 1
                assert "401" in responses, f"{method} {path} takes a token but documents no 401"
            for code, response in responses.items():
                assert response.get("description"), f"{method} {path} {code} has no description"
                if code.startswith(("4", "5")) and path.startswith("/api/"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == error_body, f"{method} {path} {code}: {schema}"
    assert secured >= 9


async def test_schemathesis_finds_no_failure(server, tmp_path):
    user = await h.user(server, "admin")
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.base}/api/openapi.json",
        "--checks", "all",
        # A token for the operations that declare one. An admin may do everything, so a refusal
        # of a valid request is not a matter of roles; 401 without (or with a wrong) token is
        # probed by the checks themselves.
        "--header", f"Authorization: Bearer {user.token}",
        "--max-examples", "20",
        "--seed", "20261207",
        "--workers", "1",
        "--request-timeout", "5",
        "--generation-database", "none",
        "--no-color",
    ]
    run = subprocess.run(
        cmd,
        cwd=tmp_path,  # schemathesis keeps a cache folder where it runs
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=80,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}):\n{out[-12000:]}"
    # All four phases ran on every operation (none was skipped for want of a schema it could use).
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out[-4000:]
