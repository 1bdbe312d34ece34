#!/usr/bin/env python3
"""Issue 8 audit: the module cycles among the top-level modules of one crate (`crate::X` uses,
comments and tests left out). Usage: scripts/audit-module-cycles.py crates/hydra-server/src"""
import os,re,sys,itertools
root=sys.argv[1]
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f); rel=os.path.relpath(p,root)
        top=rel.split('/')[0].removesuffix('.rs')
        if top in ('lib','main'): continue
        src=open(p).read()
        # strip tests
        src=src.split('#[cfg(test)]')[0]
        src='\n'.join(l for l in src.split('\n') if not l.strip().startswith('//'))
        deps=set(re.findall(r'crate::(\w+)',src))
        # also `use super::` within top-level dir is internal
        mods.setdefault(top,set()).update(d for d in deps if d!=top)
names=set(mods)
g={m:{d for d in ds if d in names} for m,ds in mods.items()}
# find SCCs (Tarjan)
index={};low={};st=[];on=set();res=[];i=[0]
def sc(v):
    index[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in g[v]:
        if w not in index: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],index[w])
    if low[v]==index[v]:
        c=[]
        while True:
            w=st.pop();on.discard(w);c.append(w)
            if w==v:break
        if len(c)>1: res.append(c)
sys.setrecursionlimit(10000)
for v in g:
    if v not in index: sc(v)
for c in res:
    print('cycle:',sorted(c))
    for a in c:
        print('  ',a,'->',sorted(g[a]&set(c)))
if not res: print('no cycle')
