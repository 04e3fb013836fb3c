"""``/v1/chat/completions`` and ``/v1/completions`` with the ``retrieval`` option, through the real
openai client: passages go into the prompt, and the response carries them and the answer's
citations. (``rag_home``, an index of two documents, is in conftest.py.)"""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("faiss")
pytest.importorskip("bm25s")

pytestmark = pytest.mark.slow


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
        listed = c.get("/retrieval/indexes", cast_to=object)   # what retrieval.index may name
        assert [(i["id"], i["passages"], i["files"]) for i in listed["data"]] == [("customs", 2, 2)]
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


def test_completions_with_retrieval_put_the_passages_before_the_prompt(live_server, rag_home):
    server, app = live_server(rag_home=str(rag_home))
    with server as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        prompt = "Where is La Tomatina held?"
        done = c.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=16, temperature=0, n=2,
                                    extra_body={"retrieval": {"index": "customs", "k": 1}})
        extra = done.model_extra
        assert [p["number"] for p in extra["passages"]] == [1]
        assert "Tomatina" in extra["passages"][0]["text"]
        assert len(done.choices) == 2 and all("citations" in ch.model_extra for ch in done.choices)
        record = app.state.store.completion(done.id)
        assert record["prompt"].startswith("Answer the question from the passages.")
        assert record["prompt"].endswith(f"Question: {prompt}") and "[1] Customs in Spain > Festivals" in record["prompt"]

        final = None   # streamed: the passages on the final chunk
        for chunk in c.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=4, temperature=0,
                                          stream=True, extra_body={"retrieval": {"index": "customs", "k": 2}}):
            if chunk.choices and chunk.choices[0].finish_reason:
                final = chunk
        assert final is not None and len(final.model_extra["passages"]) == 2

        with pytest.raises(openai.BadRequestError) as e:   # one query per request
            c.completions.create(model="smollm2-135m", prompt=[prompt, "And in Mexico?"], max_tokens=4,
                                 extra_body={"retrieval": {"index": "customs"}})
        assert e.value.body["param"] == "prompt"
