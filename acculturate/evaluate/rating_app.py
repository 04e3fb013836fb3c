"""`acculturate rate RUN_DIR`: a small web page where people rate saved answers 1-5, blind to the system.

Needs the ``serve`` extra (FastAPI, uvicorn). The page asks for a rater id, then shows one answer at
a time (question and answer only: the system is hidden behind an opaque key) in the rater's own
shuffled order; ratings go to ``RUN_DIR/ratings.sqlite``. Run ``acculturate eval RUN_DIR --rescore``
afterwards to put the human scores and their agreement with the judge in the report.
"""

# No `from __future__ import annotations`: FastAPI must see the request model class itself, not a
# string naming a class local to create_app.
from pathlib import Path

from acculturate.evaluate.ratings import RATINGS_FILE, RatingStore, rating_items, shuffled_for

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>acculturate: rate answers</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
.q{font-weight:600;margin:1rem 0 .3rem}.a{white-space:pre-wrap;background:#f4f4f4;padding:.8rem;border-radius:6px}
button{font-size:1.1rem;margin:.2rem;padding:.4rem .9rem}#scale{color:#555;font-size:.9rem}
</style></head><body>
<h1>Rate the answers</h1>
<p>How culturally appropriate is each answer for the region it is asked about?
1 = inappropriate or wrong, 3 = generic, 5 = fully appropriate. You do not see which system wrote it.</p>
<p><label>Your rater id: <input id="rater" autocomplete="off"></label> <button onclick="next()">Start</button></p>
<div id="box"></div>
<script>
let item = null;
function esc(s){return s.replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
async function next(){
  const rater = document.getElementById('rater').value.trim();
  if(!rater){alert('Enter a rater id first');return;}
  const r = await fetch('/api/next?rater='+encodeURIComponent(rater));
  const d = await r.json();
  const box = document.getElementById('box');
  if(d.item === null){box.innerHTML = '<p>All '+d.total+' answers rated. Thank you!</p>'; return;}
  item = d.item;
  let buttons = '';
  for(let s=1;s<=5;s++){buttons += '<button onclick="rate('+s+')">'+s+'</button>';}
  box.innerHTML = '<p>'+(d.rated+1)+' of '+d.total+'</p><div class="q">'+esc(d.prompt)+'</div>'
    + '<div class="a">'+esc(d.output)+'</div><p>'+buttons+'</p>';
}
async function rate(score){
  const rater = document.getElementById('rater').value.trim();
  const r = await fetch('/api/rate',{method:'POST',headers:{'Content-Type':'application/json'},
    body:JSON.stringify({rater:rater,item:item,score:score})});
  if(!r.ok){alert('could not save: '+(await r.text()));return;}
  next();
}
</script></body></html>
"""


def create_app(run_dir: str | Path):
    """The FastAPI app serving the rating page for ``run_dir``.

    Routes: ``GET /`` (the page), ``GET /api/next?rater=ID`` (the next unrated item: opaque key,
    question, answer; ``item`` null when done), ``POST /api/rate`` ``{"rater", "item", "score"}``.
    """
    try:
        from fastapi import FastAPI, HTTPException
    except ImportError:
        raise ImportError("the rating page needs FastAPI and uvicorn: pip install 'acculturate[serve]'") from None
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel

    run_dir = Path(run_dir)
    items = rating_items(run_dir)
    if not items:
        raise FileNotFoundError(f"{run_dir}: no answers to rate (the run has no 'appropriateness' task "
                                "outputs yet; run `acculturate eval` with such a task first)")
    by_key = {it.key: it for it in items}
    store = RatingStore(run_dir / RATINGS_FILE)
    app = FastAPI(title="acculturate ratings")

    class Rating(BaseModel):
        rater: str
        item: str
        score: int

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/next")
    def next_item(rater: str) -> dict:
        if not rater.strip():
            raise HTTPException(422, "rater: expected a non-empty id")
        rated = store.rated_by(rater) & set(by_key)
        for it in shuffled_for(items, rater.strip()):
            if it.key not in rated:
                return {"item": it.key, "prompt": it.prompt, "output": it.output,
                        "rated": len(rated), "total": len(items)}
        return {"item": None, "rated": len(rated), "total": len(items)}

    @app.post("/api/rate")
    def rate(rating: Rating) -> dict:
        if rating.item not in by_key:
            raise HTTPException(404, f"item: unknown key {rating.item!r}")
        try:
            store.add(rating.item, rating.rater, rating.score)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return {"ok": True}

    return app


def serve_ratings(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the rating page until interrupted."""
    import uvicorn

    app = create_app(run_dir)
    print(f"rating page for {run_dir}: http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
