"""Issue 13 diagnostic (uses the demo world's truth, not a user-facing method): does each over-represented
(label, concept) finding depend on the TRUE background within the label (a second thing in the picture, like
the planted grass) or not (the model's word for the object itself: a label proxy)?

    PYTHONPATH=. python benchmarks/diag_proxies_demo.py DEMO.lancedb DEMO-DATA/manifest.csv [N]
"""
import collections, numpy as np
from lance_concepts.query.spurious import spurious
from lance_concepts.query.connection import connect, arrow_table
from lance_concepts.demo.world import read_manifest
from scipy.stats import chi2_contingency
import sys
db, manifest = sys.argv[1], sys.argv[2]
truth={r["id"]: r for r in read_manifest(manifest)}
r=spurious(db)
con=connect(db)
rows=arrow_table(con,"SELECT CAST(id AS VARCHAR) id, label, concept_ids, concept_weights FROM images").to_pylist()
names=__import__("lance_concepts.query.connection",fromlist=["x"]).connection_state(con).names
bg_dep=0; out=[]
for f in r.table.to_pylist():
    cid=names.id(f["concept"])
    sub=[x for x in rows if x["label"]==f["label"]]
    has=np.array([cid in (x["concept_ids"] or []) for x in sub])
    bgs=np.array([truth[x["id"]]["background"] for x in sub])
    tab=np.array([[np.sum(has&(bgs==b)), np.sum(~has&(bgs==b))] for b in sorted(set(bgs))])
    tab=tab[tab.sum(1)>0]
    p=chi2_contingency(tab)[1] if (tab[:,0].sum()>0 and tab[:,1].sum()>0) else 1
    top_bg=collections.Counter(bgs[has]).most_common(1)[0]
    out.append((f["label"],f["concept"],p,top_bg[0],top_bg[1]/max(has.sum(),1)))
dep=[o for o in out if o[2]<0.001]
print(len(out),"findings;", len(dep),"depend on the true background within the label (chi2 p<0.001)")
for o in out[:int(sys.argv[3]) if len(sys.argv) > 3 else 10]: print(o[0],o[1],f"p={o[2]:.1g}",o[3],f"{o[4]:.0%}")
