#!/usr/bin/env python3
"""Sums the CPU of each busy phase of a scripts/cpu-sample.sh log: consecutive samples in which
kube-apiserver used more than one core. Prints, per phase, its span and the CPU seconds of
kube-apiserver, etcd, kube-controller-manager and the palisade controllers."""
import sys
rows=[]
for l in open(sys.argv[1]):
    a,b=l.split('|')
    t,*m=map(int,a.split())
    d={k:int(v or 0) for k,v in (x.split('=') for x in b.split())}
    rows.append((t,m,d))
# phases: consecutive samples where the apiserver uses > 1 core (>500 ticks / 5 s); label by palisade activity
phases=[];cur=None
for (t0,m0,d0),(t1,m1,d1) in zip(rows,rows[1:]):
    api=d1['kube-apiserver']-d0['kube-apiserver']
    pal=max(0,d1['palisade']-d0['palisade'])
    hot=api>500
    if hot:
        if cur is None: cur={'t0':t0,'api':0,'etcd':0,'kcm':0,'pal':0}
        cur['t1']=t1;cur['api']+=api;cur['etcd']+=d1['etcd']-d0['etcd'];cur['kcm']+=d1['kube-controller-manager']-d0['kube-controller-manager'];cur['pal']+=pal
    elif cur: phases.append(cur);cur=None
if cur: phases.append(cur)
for p in phases:
    print('t=%4d..%4d (%3d s): apiserver %.1f s CPU, etcd %.1f, kcm %.1f, palisade %.1f'%(p['t0']-rows[0][0],p['t1']-rows[0][0],p['t1']-p['t0'],p['api']/100,p['etcd']/100,p['kcm']/100,p['pal']/100))
