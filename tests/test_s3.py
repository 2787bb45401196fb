"""Object storage: s3:// databases with storage options (and with AWS_* variables only) through
ingest (both engines), decompose, sql, filter and the CLI, against a moto S3 server on loopback."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("boto3")

from click.testing import CliRunner  # noqa: E402

from lance_concepts.demo.world import generate_dataset
from lance_concepts.lake.decompose import decompose_table
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.store import read_metadata

N = 24
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1",
        "allow_http": "true"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port) with bucket 'lake'; -> storage options."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="lake")
    yield {**KEYS, "aws_endpoint": endpoint}
    server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("s3-world") / "data", n=N, seed=5)


def test_local_engine_on_s3_and_queries_with_options(s3, world, tmp_path):
    import lance_concepts as lc
    from lance_concepts.query.named import sql

    db = "s3://lake/local.lancedb"
    s = ingest(world, db, model="demo", vocab="demo", batch_size=8, workers=0, quiet=True, storage_options=s3)
    assert (s.ok, s.errors, s.rows_in_table) == (N, 0, N)
    local = str(tmp_path / "ref.lancedb")  # ground truth: the same source on disk
    ingest(world, local, model="demo", vocab="demo", batch_size=8, workers=0, quiet=True)
    assert read_metadata(db, storage_options=s3)["model_fingerprint"] == read_metadata(local)["model_fingerprint"]
    q = "SELECT count(*) AS n, count(DISTINCT image_id) AS m FROM image_concepts"
    assert sql(db, q, storage_options=s3).to_pylist() == sql(local, q).to_pylist()
    red_s3 = lc.filter(db, "red", 0.0, storage_options=s3).column("id").to_pylist()
    assert red_s3 and sorted(red_s3) == sorted(lc.filter(local, "red", 0.0).column("id").to_pylist())
    # the report aggregates were written to the bucket too, and the reports read them there
    assert not [n for n in s.notes if "aggregates" in n], s.notes
    dr, dl = lc.drift(db, storage_options=s3), lc.drift(local)
    assert dr.params["engine"] == dl.params["engine"] == "rollup"
    assert dr.table.column("n_present") == dl.table.column("n_present")
    d = decompose_table(db, "demo", 0.4, storage_options=s3, quiet=True)
    assert d.rows == N and read_metadata(db, storage_options=s3)["concept_version"] == 2
    assert lc.drift(db, storage_options=s3).params["engine"] == "rollup"  # rebuilt for the new weights


def test_cli_with_environment_credentials(s3, world, monkeypatch):
    """Credentials, endpoint and region from AWS_* variables; --storage-option for the rest."""
    from lance_concepts.cli import main

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                 "AWS_ENDPOINT": s3["aws_endpoint"], "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(k, v)
    db = "s3://lake/env.lancedb"
    r = CliRunner().invoke(main, ["ingest", str(world), "--db", db, "--model", "demo", "--vocab", "demo",
                                  "--workers", "0", "--quiet", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    assert f"ok {N}, error 0" in r.output
    r = CliRunner().invoke(main, ["sql", "--db", db, "--format", "csv", "SELECT count(*) AS n FROM images"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["n", str(N)]
    r = CliRunner().invoke(main, ["filter", "--db", db, "--concept", "red", "--min", "0", "--format", "csv",
                                  "--storage-option", "allow_http=true"])
    assert r.exit_code == 0, r.output
    assert len(r.output.strip().splitlines()) > 1


def test_ray_engine_on_s3(s3, world, tmp_path, ray_session):
    from lance_concepts.cli import main
    from lance_concepts.query.named import sql

    db = "s3://lake/ray.lancedb"
    args = ["ingest", str(world), "--db", db, "--model", "demo", "--vocab", "demo", "--quiet",
            "--batch-size", "8", "--engine", "ray"]
    for k, v in s3.items():
        args += ["--storage-option", f"{k}={v}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"ok {N}, error 0" in r.output and "engine ray" in r.output
    local = str(tmp_path / "ref.lancedb")
    ingest(world, local, model="demo", vocab="demo", batch_size=8, workers=0, quiet=True)
    q = "SELECT image_id, concept_id FROM image_concepts ORDER BY 1, 2"
    assert sql(db, q, storage_options=s3).to_pylist() == sql(local, q).to_pylist()
    d = decompose_table(db, "demo", 0.4, storage_options=s3, quiet=True, engine="ray")
    dl = decompose_table(local, "demo", 0.4, quiet=True)
    assert (d.rows, d.postings) == (dl.rows, dl.postings) == (N, dl.postings)
    assert sql(db, q, storage_options=s3).to_pylist() == sql(local, q).to_pylist()
