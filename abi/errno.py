"""xen/include/public/errno.h: the error numbers hypercalls return (negated).

Xen keeps its own errno space.  The low numbers match Linux/x86, but Xen
skips some and the header is the only authority; never assume host `errno`.
In C the values are enumerators named ``XEN_<NAME>``; here they drop the
prefix (``EPERM``), and the registry checks them against ``XEN_EPERM``.

A hypercall returning ``-ERESTART`` is never seen by the guest: the
hypervisor re-executes the hypercall instruction (a continuation).
"""

EPERM = 1  # caller lacks the privilege for this op
ENOENT = 2
ESRCH = 3  # no such domain
EINTR = 4
EIO = 5
ENXIO = 6
E2BIG = 7
ENOEXEC = 8
EBADF = 9
ECHILD = 10
EAGAIN = 11  # transient; retry
EWOULDBLOCK = 11  # alias of EAGAIN
ENOMEM = 12
EACCES = 13
EFAULT = 14  # a guest handle pointed at unmapped or unwritable memory
EBUSY = 16
EEXIST = 17
EXDEV = 18
ENODEV = 19
ENOTDIR = 20
EISDIR = 21
EINVAL = 22
ENFILE = 23
EMFILE = 24
ENOSPC = 28
EROFS = 30
EMLINK = 31
EDOM = 33
ERANGE = 34
EDEADLK = 35
EDEADLOCK = 35  # alias of EDEADLK
ENAMETOOLONG = 36
ENOLCK = 37
ENOSYS = 38  # unknown hypercall or sub-op
ENOTEMPTY = 39
ENODATA = 61
ETIME = 62
EBADMSG = 74
EOVERFLOW = 75
EILSEQ = 84
ERESTART = 85  # internal: the hypercall is continued, never returned to a guest
ENOTSOCK = 88
EMSGSIZE = 90
EOPNOTSUPP = 95
EADDRINUSE = 98
EADDRNOTAVAIL = 99
ENOBUFS = 105
EISCONN = 106
ENOTCONN = 107
ETIMEDOUT = 110
ECONNREFUSED = 111

# Name of every value.  Where two names share a value (EAGAIN/EWOULDBLOCK,
# EDEADLK/EDEADLOCK) the first one in the header wins.
ERRNO_NAMES: dict[int, str] = {}
for _name, _value in list(globals().items()):
    if _name.startswith("E") and _name.isupper() and isinstance(_value, int):
        ERRNO_NAMES.setdefault(_value, _name)
del _name, _value
