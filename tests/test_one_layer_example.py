"""The README's "one layer alone" example is a real FastAPI app (examples/one_layer.py): run it over a socket."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from examples.one_layer import app
from tests.servers import serve

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_shows_the_example_as_it_is():
    example = (ROOT / "examples" / "one_layer.py").read_text()
    code = example[example.index("from fastapi") :]
    assert code.strip() in (ROOT / "README.md").read_text()


def test_the_fastapi_example_annotates_its_own_routes_and_validates_its_llm_route():
    with serve(app) as url:
        who = httpx.get(url + "/whoami", headers={"x-mux-tags": "team=search", "x-mux-end-user": "u1"})
        assert who.json()["tags"] == {"team": "search"} and who.json()["end_user"] == "u1"
        assert who.json()["request_id"] == who.headers["x-mux-request-id"]
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="toy",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"mlx:tags": {"tenant": "acme"}, "mlx:end_user": "u2"},
            )
            assert reply.choices[0].message.content == "tags={'tenant': 'acme'} end_user=u2"
            try:
                client.chat.completions.create(
                    model="toy", messages=[{"role": "user", "content": "hi"}], extra_body={"mlx:tags": {"tenant": 7}}
                )
            except openai.BadRequestError as error:
                assert error.status_code == 400 and error.body["param"] == "mlx:tags"
            else:
                raise AssertionError("a malformed mlx:tags reached the endpoint")
