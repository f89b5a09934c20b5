#!/usr/bin/env python3
"""Regenerates the seeds of fuzz/corpus/ that come from this machine or are built by hand:
options (a{sv} as the bus serializes it), uevent (from /sys/.../uevent files), statmount
and fanotify (read from the running kernel), keys and krb5 (in the kernel's and MIT's
formats). Run as root from the repository's top: python3 fuzz/seeds.py. The mount-event
fanotify seed is taken in a private mount namespace (the script unshares one first), so no
mount is seen outside it. The others are copied by hand: fuzz/corpus/mountinfo from
/proc/self/mountinfo, config from data/watchd.toml, record from docs/protocol.md."""
import ctypes, glob, os, struct, tempfile

C = 'fuzz/corpus/'
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class W:
    def __init__(s): s.b=bytearray()
    def pad(s,a):
        while len(s.b)%a: s.b.append(0)
    def u32(s,v): s.pad(4); s.b+=struct.pack('<I',v)
    def u64(s,v): s.pad(8); s.b+=struct.pack('<Q',v)
    def str_(s,v): v=v.encode(); s.u32(len(v)); s.b+=v+b'\0'
    def sig(s,v): v=v.encode(); s.b+=bytes([len(v)])+v+b'\0'
def value(w,sig,v):
    if sig=='u': w.u32(v)
    elif sig=='b': w.u32(1 if v else 0)
    elif sig=='s': w.str_(v)
    elif sig=='as':
        w.u32(0); at=len(w.b)-4; start=len(w.b)
        for x in v: w.str_(x)
        w.b[at:at+4]=struct.pack('<I',len(w.b)-start)
    elif sig=='a(utuu)':
        w.u32(0); at=len(w.b)-4; w.pad(8); start=len(w.b)
        for (a,b,c,d) in v: w.pad(8); w.u32(a); w.u64(b); w.u32(c); w.u32(d)
        w.b[at:at+4]=struct.pack('<I',len(w.b)-start)
    elif sig=='i': w.pad(4); w.b+=struct.pack('<i',v)
def asv(entries):
    w=W(); w.u32(0); w.pad(8); start=len(w.b)
    for k,sig,v in entries:
        w.pad(8); w.str_(k); w.sig(sig); value(w,sig,v)
    w.b[0:4]=struct.pack('<I',len(w.b)-start)
    return bytes(w.b)
seeds={
 'subscribe':[('depth','u',64)],
 'devices':[('subsystem','s','block/disk'),('tag','s','systemd'),('sysname','s','loop[0-9]*'),('property','as',['ID_FS_TYPE=ext*','DISKSEQ=*']),('properties','as',['DISKSEQ']),('initial','b',True)],
 'filters':[('filters','a(utuu)',[(2,0xff,0,0),(4,2,1,0)]),('initial','b',False)],
 'keys':[('key','s','@user'),('uid','u',1000),('nested','b',True)],
 'krb5':[('cache','s','KEYRING:persistent:1000'),('signal','b',True)],
 'mounts':[('path','s','/mnt')],
 'wrong-type':[('depth','i',-1)],
 'empty':[],
}


def options():
    for n, e in seeds.items():
        open(C + f'options/{n}', 'wb').write(b'\0' + asv(e))


def uevents():
    devices = ['/sys/devices/virtual/block/loop0', '/sys/devices/virtual/net/lo',
               '/sys/devices/virtual/mem/null', '/sys/devices/virtual/tty/tty0']
    devices += sorted(glob.glob('/sys/class/block/*'))[:3] + sorted(glob.glob('/sys/bus/pci/devices/*'))[:2]
    for n, path in enumerate(devices):
        real = os.path.realpath(path)
        try:
            text = open(real + '/uevent').read()
        except OSError:
            continue
        devpath = real[len('/sys'):]
        action = 'add' if n % 2 else 'change'
        parts = [f'{action}@{devpath}', f'ACTION={action}', f'DEVPATH={devpath}']
        if os.path.exists(real + '/subsystem'):
            parts.append('SUBSYSTEM=' + os.path.basename(os.path.realpath(real + '/subsystem')))
        parts += [l for l in text.splitlines() if l]
        parts.append(f'SEQNUM={4000 + n}')
        open(C + f'uevent/{os.path.basename(real)}-{action}', 'wb').write('\0'.join(parts).encode() + b'\0')
    open(C + 'uevent/net-move', 'wb').write(
        b'move@/devices/virtual/net/eth1\0ACTION=move\0DEVPATH=/devices/virtual/net/eth1\0'
        b'DEVPATH_OLD=/devices/virtual/net/eth0\0SUBSYSTEM=net\0INTERFACE=eth1\0IFINDEX=3\0'
        b'TAGS=:systemd:seat:\0SEQNUM=5123\0')


def keys():
    for ring, name in (('@u', 'user-keyring'), ('@s', 'session-keyring')):
        os.system(f'keyctl rdescribe {ring} > {C}key_description/{name}')
    open(C + 'key_description/user-key', 'w').write('user;1000;1000;3f010000;krb_ccache:primary;with;semicolons')
    open(C + 'key_description/big-key', 'w').write('big_key;1000;1000;3f010000;krb_ccache_x')

    def note(t, sub, payload):
        return struct.pack('<II', (t & 0xffffff) | (sub << 24), 8 + len(payload)) + payload
    notes = (note(1, 3, struct.pack('<ii', 724547400, 12345)) + note(1, 0, struct.pack('<ii', 5, 0))
             + note(0, 1, b'') + note(0, 0, struct.pack('<q', 724547400)))
    open(C + 'key_description/watch-queue-notes', 'wb').write(notes)


def krb5():
    name = b'krb_ccache_Xy12Ab'
    open(C + 'krb5/primary', 'wb').write(b'\x00' + struct.pack('>II', 1, len(name)) + name)

    def princ(comps, realm):
        b = struct.pack('>II', 1, len(comps)) + struct.pack('>I', len(realm)) + realm
        for c in comps:
            b += struct.pack('>I', len(c)) + c
        return b
    open(C + 'krb5/file-v4', 'wb').write(b'\x01\x05\x04' + struct.pack('>H', 12) + struct.pack('>HHII', 1, 8, 0, 0)
                                         + princ([b'alice'], b'EXAMPLE.ORG') + b'\0' * 16)
    open(C + 'krb5/file-v3', 'wb').write(b'\x01\x05\x03' + princ([b'host', b'server.example.org'], b'EXAMPLE.ORG'))
    names = [b'KEYRING:persistent:1000', b'KEYRING:user:krb_ccache_x:tkt1', b'DIR:/run/user/1000/krb5cc',
             b'DIR::/run/user/1000/krb5cc/tktA', b'FILE:/tmp/krb5cc_1000', b'/tmp/krb5cc_1000', b'KCM:1000', b'MEMORY:x']
    for i, n in enumerate(names):
        open(C + f'krb5/name-{i}', 'wb').write(b'\x02' + n)
    open(C + 'krb5/krb5conf', 'wb').write(b'\x03[libdefaults]\n  default_realm = EXAMPLE.ORG\n'
                                          b'  default_ccache_name = KEYRING:persistent:%{uid}\n[realms]\n')
    open(C + 'krb5/krb5conf-dir', 'wb').write(b'\x03[libdefaults]*\ndefault_ccache_name = DIR:%{TEMP}/krb5cc_%{euid}%{null}\n')


def statmount():
    # statmount(2): listmount the root namespace's mounts, statmount each with every field.
    LSMT_ROOT = 0xffffffffffffffff
    req = struct.pack('<IIQQQ', 32, 0, LSMT_ROOT, 0, 0)
    ids = (ctypes.c_uint64 * 64)()
    n = libc.syscall(458, ctypes.c_char_p(req), ids, 64, 0)
    assert n > 0, ctypes.get_errno()
    mask = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x800
    kept = 0
    for i in range(min(n, 12)):
        req = struct.pack('<IIQQQ', 32, 0, ids[i], mask, 0)
        buf = ctypes.create_string_buffer(8192)
        r = libc.syscall(457, ctypes.c_char_p(req), buf, 8192, 0)
        if r != 0:
            continue
        size = struct.unpack_from('<I', buf.raw, 0)[0]
        open(C + f'statmount/mount-{i}', 'wb').write(buf.raw[:size])
        kept += 1
    print('statmount buffers', kept)


def fanotify_files():
    # fanotify: FID + DFID_NAME records for creates, renames, deletes in a temp dir.
    FAN_CLASS_NOTIF = 0; FAN_REPORT_FID = 0x200; FAN_REPORT_DIR_FID = 0x400; FAN_REPORT_NAME = 0x800
    FAN_REPORT_TARGET_FID = 0x1000
    init = FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_REPORT_DIR_FID | FAN_REPORT_NAME | FAN_REPORT_TARGET_FID
    fd = libc.fanotify_init(init | 0x800000 * 0, os.O_RDONLY)
    assert fd >= 0, ctypes.get_errno()
    d = tempfile.mkdtemp(dir='/var/tmp')
    FAN_CREATE = 0x100; FAN_DELETE = 0x200; FAN_MOVED_FROM = 0x40; FAN_MOVED_TO = 0x80
    FAN_ATTRIB = 0x4; FAN_CLOSE_WRITE = 0x8; FAN_ONDIR = 0x40000000; FAN_EVENT_ON_CHILD = 0x08000000
    FAN_MARK_ADD = 1; FAN_MODIFY = 0x2; FAN_RENAME = 0x10000000
    m = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_MODIFY | FAN_ONDIR | FAN_EVENT_ON_CHILD | FAN_RENAME
    r = libc.fanotify_mark(fd, FAN_MARK_ADD, ctypes.c_uint64(m), -100, d.encode())
    assert r == 0, ctypes.get_errno()
    p = os.path.join(d, 'a file'); open(p, 'w').write('x')
    os.rename(p, os.path.join(d, 'b'))
    os.mkdir(os.path.join(d, 'sub')); os.chmod(os.path.join(d, 'b'), 0o600)
    buf = os.read(fd, 8192)
    open(C + 'fanotify/create-rename-mkdir', 'wb').write(buf)
    os.unlink(os.path.join(d, 'b')); os.rmdir(os.path.join(d, 'sub'))
    buf = os.read(fd, 8192)
    open(C + 'fanotify/unlink-rmdir', 'wb').write(buf)
    os.rmdir(d); os.close(fd)
    print('fanotify ok')


def fanotify_mounts():
    assert libc.unshare(0x20000) == 0
    assert libc.mount(b"none", b"/", None, 0x40000 | 0x4000, None) == 0  # MS_REC|MS_PRIVATE
    FAN_REPORT_MNT = 0x4000
    fd = libc.fanotify_init(FAN_REPORT_MNT, os.O_RDONLY)
    assert fd >= 0, ctypes.get_errno()
    ns = os.open('/proc/self/ns/mnt', os.O_RDONLY)
    FAN_MARK_ADD = 1; FAN_MARK_MNTNS = 0x110
    r = libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MNTNS, ctypes.c_uint64(0x01000000 | 0x02000000), ns, None)
    assert r == 0, ctypes.get_errno()
    d = tempfile.mkdtemp(dir='/var/tmp')
    assert libc.mount(b"fuzzseed", d.encode(), b"tmpfs", 0, b"size=1m") == 0
    assert libc.umount2(d.encode(), 0) == 0
    os.rmdir(d)
    open('fuzz/corpus/fanotify/mount-attach-detach', 'wb').write(os.read(fd, 4096))
    print("ok")


options()
uevents()
keys()
krb5()
statmount()
fanotify_files()
fanotify_mounts()  # last: it leaves this process in its own mount namespace
