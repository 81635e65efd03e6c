"""Baseline of bench_http: a bare Flask JSON endpoint under the same gunicorn settings."""

from flask import Flask, jsonify, request


def create_bare_app() -> Flask:
    """POST /v1/checkin parses the JSON body and answers a fixed verdict: no auth, no Redis."""
    app = Flask(__name__)

    @app.post("/v1/checkin")
    def checkin():
        body = request.get_json(force=True)
        return jsonify({"imei": body.get("imei"), "verdict": "allow"})

    return app
