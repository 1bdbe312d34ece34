#!/usr/bin/env python3
"""Issue 8 audit: functions longer than N lines (default 80) outside tests and benches.
Usage: scripts/audit-long-functions.py crates [N]"""
import os,re,sys
root=sys.argv[1]; limit=int(sys.argv[2]) if len(sys.argv)>2 else 80
out=[]
for dp,dn,fn in os.walk(root):
    if '/target' in dp or '/tests' in dp or '/benches' in dp: continue
    for f in fn:
        if not f.endswith('.rs') or f=='tests.rs': continue
        p=os.path.join(dp,f)
        lines=open(p).read().split('\n')
        # stop at #[cfg(test)]
        end=len(lines)
        for i,l in enumerate(lines):
            if l.startswith('#[cfg(test)]'): end=i;break
        i=0
        while i<end:
            l=lines[i]
            m=re.match(r'^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)',l)
            if m:
                ind=len(m.group(1))
                # find opening brace line then closing brace at same indent
                j=i
                while j<end and not lines[j].rstrip().endswith('{') and not lines[j].rstrip().endswith(';'):
                    j+=1
                if j<end and lines[j].rstrip().endswith(';'): i=j+1;continue
                k=j+1
                while k<end and not (lines[k].startswith(' '*ind+'}') and len(lines[k])-len(lines[k].lstrip())==ind):
                    k+=1
                n=k-i+1
                if n>limit: out.append((n,p,i+1,m.group(7)))
                i=k+1;continue
            i+=1
for n,p,l,name in sorted(out,reverse=True): print(n,p+':'+str(l),name)
