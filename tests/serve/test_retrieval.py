"""``/v1/chat/completions`` with the ``retrieval`` option, through the real openai client: passages go
into the prompt, and the response carries them and the answer's citations."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("faiss")
pytest.importorskip("bm25s")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rag_home(tmp_path_factory):
    from acculturate.rag import update_index

    home = tmp_path_factory.mktemp("rag-home")
    docs = home.parent / "serve-docs"
    docs.mkdir(exist_ok=True)
    (docs / "mexico.md").write_text("---\nregion: Mexico\n---\n# Customs in Mexico\n\n## Holidays\n\n"
                                    "On the Day of the Dead families build altars with marigolds and sugar skulls.\n")
    (docs / "spain.md").write_text("---\nregion: Spain\n---\n# Customs in Spain\n\n## Festivals\n\n"
                                   "La Tomatina is a tomato fight held in Bunol every August.\n")
    update_index([docs], "customs", home=home, progress=False)
    return home


def test_chat_with_retrieval_returns_passages_and_citations(live_server, rag_home):
    server, app = live_server(rag_home=str(rag_home))
    with server as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        question = [{"role": "user", "content": "What do families build for the Day of the Dead?"}]
        chat = c.chat.completions.create(model="smollm2-135m", messages=question, max_tokens=24, temperature=0,
                                         extra_body={"retrieval": {"index": "customs", "k": 2}})
        extra = chat.model_extra
        assert [p["number"] for p in extra["passages"]] == [1, 2]
        assert "Day of the Dead" in extra["passages"][0]["text"]
        assert extra["passages"][0]["meta"]["region"] == "Mexico"
        numbers = chat.choices[0].model_extra["citations"]
        assert [c_["number"] for c_ in extra["citations"]] == numbers
        assert chat.choices[0].message.content

        # The prompt the model saw (stored with the completion) holds the numbered passages.
        record = app.state.store.completion(chat.id)
        assert "[1] Customs in Mexico > Holidays\n" in record["prompt"]

        # A filter narrows the passages; streaming carries them on the final chunk.
        final = None
        for chunk in c.chat.completions.create(model="smollm2-135m", messages=question, max_tokens=8, temperature=0,
                                               stream=True, extra_body={"retrieval": {
                                                   "index": "customs", "k": 2, "filters": {"region": "Spain"}}}):
            if chunk.choices and chunk.choices[0].finish_reason:
                final = chunk
        assert final is not None
        assert [p["meta"]["region"] for p in final.model_extra["passages"]] == ["Spain"]

        for bad, param in [({"index": "../etc", "k": 2}, "retrieval.index"), ({"index": "customs", "k": 0}, "retrieval.k"),
                           ({"index": "nope"}, "retrieval.index"), ({"index": "customs", "top": 3}, "retrieval")]:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="smollm2-135m", messages=question, max_tokens=4,
                                          extra_body={"retrieval": bad})
            assert e.value.body["param"] == param
