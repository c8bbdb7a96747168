//! Batched datagram I/O with `recvmmsg`/`sendmmsg` (Linux), memory advice for term logs and
//! the monotonic clock: the only unsafe code of the crate.
//!
//! Owns: preallocated slots (buffers, addresses, iovecs, headers) for a batch of datagrams.
//! Invariant: every pointer handed to the kernel points into this struct's heap buffers, which
//! are allocated once in `new` and never resized (so they never move, even when the struct
//! does), or, for a send, into the external buffer borrowed by that `send` call (a sender's
//! term log, so data datagrams go out without a copy), or, for `recv_direct`, into the region
//! borrowed mutably by that call (a receiver's term log, so in-order datagrams arrive where
//! they belong); send and direct-receive headers are rebuilt before every call, plain receive
//! headers once and then only their kernel-written fields are reset.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// A batch of datagram slots.
pub(crate) struct Batch {
    slot_length: usize,
    data: Vec<u8>,
    lengths: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lengths: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    /// Receive straight into a caller's region: two per slot (region part, overflow part).
    direct_iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    /// Send: where each slot's bytes are: `None` in the slot itself, `Some(offset)` at that
    /// offset of the external buffer handed to `send` (a sender's term log: no copy).
    external: Vec<Option<usize>>,
    /// Slots filled (send) or received (recv).
    pub count: usize,
    /// Send: slots before this one are already sent.
    pub sent: usize,
    /// Recv: headers hold valid receive pointers (set on the first `recv`).
    receive_ready: bool,
    /// Send: hand runs of equal datagrams to the kernel as one (`UDP_SEGMENT`); see
    /// [`Batch::set_segmentation`].
    segmentation: bool,
    /// Send: slots each header carries (one, or a segmented run's count).
    header_slots: Vec<usize>,
    /// Send: segmented runs sent since [`Batch::take_runs_sent`] last asked.
    runs_sent: u64,
    /// Each header's control message: a segmented run's segment size (send), or room for
    /// the kernel's (receive, with coalescing).
    controls: Vec<Control>,
    /// Recv: the socket hands runs of equal datagrams over coalesced (`UDP_GRO`); see
    /// [`Batch::set_coalescing`].
    coalescing: bool,
    /// Recv: each received slot's segment size when it holds a coalesced run (else 0).
    segments: Vec<usize>,
}

/// Room for one control message carrying a small integer (`CMSG_SPACE` of a `u32`, 8-aligned).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; 24]);

/// Largest UDP payload of an IPv4 datagram: the bound on a segmented run's bytes.
const SEGMENTED_BYTES_MAX: usize = 65_507;
/// Most segments in one run (the kernel's limit was 64 before Linux 6.0).
const SEGMENTS_MAX: usize = 64;

// SAFETY: the raw pointers inside `iovecs`/`headers` only ever point into this struct's own
// heap buffers, which never move; moving the struct to another thread moves their only owner.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(slots: usize, slot_length: usize) -> Self {
        Batch {
            slot_length,
            data: vec![0u8; slots * slot_length],
            lengths: vec![0; slots],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which
            // all-zero bytes are a valid value.
            addrs: vec![unsafe { zeroed() }; slots],
            addr_lengths: vec![0; slots],
            iovecs: vec![unsafe { zeroed() }; slots],
            direct_iovecs: vec![unsafe { zeroed() }; 2 * slots],
            headers: vec![unsafe { zeroed() }; slots],
            external: vec![None; slots],
            count: 0,
            sent: 0,
            receive_ready: false,
            segmentation: false,
            header_slots: vec![0; slots],
            runs_sent: 0,
            controls: vec![Control([0; 24]); slots],
            coalescing: false,
            segments: vec![0; slots],
        }
    }

    /// Recv: the socket was set to coalesce runs of equal datagrams ([`enable_coalescing`]):
    /// read the segment size the kernel attaches to each ([`Batch::segment`]). Slots should
    /// then hold 64 KiB.
    pub fn set_coalescing(&mut self, on: bool) {
        self.coalescing = on;
        self.receive_ready = false;
    }

    /// The segment size of received slot `i` when it holds several datagrams coalesced (each
    /// `segment` bytes, the last possibly shorter), else 0.
    pub fn segment(&self, i: usize) -> usize {
        self.segments[i]
    }

    /// Points header `i` at its control buffer for a receive, if coalescing.
    fn receive_control(&mut self, i: usize) {
        if self.coalescing {
            self.headers[i].msg_hdr.msg_control =
                self.controls[i].0.as_mut_ptr() as *mut libc::c_void;
            self.headers[i].msg_hdr.msg_controllen = std::mem::size_of::<Control>();
        }
    }

    /// Send: whether runs of datagrams lying back to back in the external buffer, of one
    /// length (the last may be shorter), for one destination, go to the kernel as one
    /// (`UDP_SEGMENT`: it cuts them into the same datagrams). Turned off for good by the
    /// first send the kernel refuses for it.
    pub fn set_segmentation(&mut self, on: bool) {
        self.segmentation = on;
    }

    /// Segmented runs sent since the last call.
    pub fn take_runs_sent(&mut self) -> u64 {
        std::mem::take(&mut self.runs_sent)
    }

    /// Bytes per slot: the longest datagram a slot holds without truncation.
    pub fn slot_length(&self) -> usize {
        self.slot_length
    }

    pub fn capacity(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_full(&self) -> bool {
        self.count == self.capacity()
    }

    pub fn has_unsent(&self) -> bool {
        self.sent < self.count
    }

    /// The buffer of the next free slot (send side).
    pub fn next_slot(&mut self) -> &mut [u8] {
        let at = self.count * self.slot_length;
        &mut self.data[at..at + self.slot_length]
    }

    /// Commits the next slot with `length` bytes for a connected socket's peer (no address).
    pub fn push_connected(&mut self, length: usize) {
        let i = self.count;
        self.lengths[i] = length;
        self.external[i] = None;
        self.addr_lengths[i] = 0;
        self.count += 1;
    }

    /// Commits the next slot as `length` bytes at `offset` of the external buffer that will be
    /// handed to [`Batch::send`], for a connected socket's peer (`destination` `None`) or for
    /// `destination`.
    pub fn push_external(&mut self, offset: usize, length: usize, destination: Option<&SockAddr>) {
        match destination {
            Some(d) => self.push(length, d),
            None => self.push_connected(length),
        }
        self.external[self.count - 1] = Some(offset);
    }

    /// Commits the next slot with `length` bytes for `destination`.
    pub fn push(&mut self, length: usize, destination: &SockAddr) {
        let i = self.count;
        self.lengths[i] = length;
        self.external[i] = None;
        let n = (destination.len() as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `destination.as_ptr()` is valid for `destination.len()` bytes and the target
        // is a sockaddr_storage, at least `n` bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                destination.as_ptr() as *const u8,
                &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut u8,
                n,
            );
        }
        self.addr_lengths[i] = n as libc::socklen_t;
        self.count += 1;
    }

    /// Datagram `i` of a received batch with its source.
    pub fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let at = i * self.slot_length;
        let bytes = &self.data[at..at + self.lengths[i].min(self.slot_length)];
        // SAFETY: the kernel filled `addrs[i]` with `addr_lengths[i]` bytes of a socket address.
        let addr = unsafe { SockAddr::new(self.addrs[i], self.addr_lengths[i]) };
        (bytes, addr.as_socket())
    }

    /// Whether datagram `i` was longer than its slot.
    pub fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    fn prepare(&mut self, from: usize, to: usize, receiving: bool, external: &[u8]) {
        for i in from..to {
            self.iovecs[i] = self.slot_iovec(i, receiving, external);
            let name_length = if receiving {
                size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.addr_lengths[i]
            };
            self.header(i, i, name_length);
        }
    }

    /// Receives up to `max` (at most a batch) datagrams without blocking. Returns how many
    /// arrived. (`recvmmsg` tries one more datagram after each one received: asking for one
    /// when one is expected saves that attempt.)
    pub fn recv(&mut self, socket: &impl AsRawFd, max: usize) -> io::Result<usize> {
        let n = self.capacity();
        let max = max.clamp(1, n);
        if !self.receive_ready {
            self.external.fill(None);
            self.prepare(0, n, true, &[]);
            for i in 0..n {
                self.receive_control(i);
            }
            self.receive_ready = true;
        } else {
            // Pointers are still valid (heap buffers never move); reset what the kernel wrote
            // into every header this call may use (not only last call's: the kernel shrinks
            // `msg_controllen` to what it wrote, 0 without a control message).
            for i in 0..max {
                let h = &mut self.headers[i].msg_hdr;
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_flags = 0;
                if self.coalescing {
                    h.msg_controllen = std::mem::size_of::<Control>();
                }
            }
        }
        let fd: RawFd = socket.as_raw_fd();
        // SAFETY: `headers[..n]` (so `headers[..max]`) are initialised and point into live buffers of this struct
        // (see `prepare`); the kernel writes at most `iov_len`/`msg_namelen` bytes into them.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.received(r)
    }

    /// Receives one datagram into slot 0 without blocking, with `recvfrom`: the cheapest
    /// receive the kernel has (no message header to copy in and walk), for a socket polled
    /// while idle, where one datagram is all there usually is. Returns 1, or the error
    /// ("would block" when nothing is waiting).
    ///
    /// No control message comes back, so on a coalescing socket a run that the kernel kept
    /// whole arrives as one datagram of all its bytes ([`Batch::segment`] 0). A run is its
    /// datagrams' frames back to back, which a receiver reads frame by frame as it reads any
    /// datagram. Read as for [`Batch::recv`]; [`Batch::truncated`] tells a datagram longer
    /// than the slot (`MSG_TRUNC` gives its real length).
    pub fn recv_one(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.addr_lengths[0] = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `slot_length` bytes into slot 0 (inside `data`)
        // and at most `addr_lengths[0]` bytes of address into `addrs[0]`, and stores the
        // address's length in `addr_lengths[0]`; all are this struct's own live buffers.
        let r = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                self.data.as_mut_ptr() as *mut libc::c_void,
                self.slot_length,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                &mut self.addrs[0] as *mut libc::sockaddr_storage as *mut libc::sockaddr,
                &mut self.addr_lengths[0],
            )
        };
        if r < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let length = r as usize;
        self.lengths[0] = length;
        // Only the flags of header 0 change: its pointers stay as `recv` or `recv_direct`
        // left them, and both reset the flags before their own calls.
        self.headers[0].msg_hdr.msg_flags = if length > self.slot_length {
            libc::MSG_TRUNC
        } else {
            0
        };
        self.segments[0] = 0;
        self.count = 1;
        Ok(1)
    }

    /// Receives up to `max` (at most a batch) datagrams without blocking, each straight into
    /// `region`: datagram `i` goes to `region[i * stride..]`, at most `stride` bytes there,
    /// its remaining bytes (up to the slot length) to its own slot at offset `stride` (see
    /// `slot_mut(i)[stride..]`). At most `region.len() / stride` datagrams are taken. Returns how
    /// many arrived; their lengths and sources are read as for [`Batch::recv`], not their
    /// bytes ([`Batch::datagram`] does not apply until the region part is copied into
    /// [`Batch::slot_mut`]).
    ///
    /// # Panics
    /// If `stride` is 0 or longer than a slot (a caller bug).
    pub fn recv_direct(
        &mut self,
        socket: &impl AsRawFd,
        region: &mut [u8],
        stride: usize,
        max: usize,
    ) -> io::Result<usize> {
        assert!(stride > 0 && stride <= self.slot_length);
        let n = max.min(self.capacity()).min(region.len() / stride);
        if n == 0 {
            self.count = 0;
            return Ok(0);
        }
        // The headers are rebuilt here: the next plain `recv` must prepare them again.
        self.receive_ready = false;
        for i in 0..n {
            let at = i * self.slot_length;
            self.direct_iovecs[2 * i] = libc::iovec {
                iov_base: region[i * stride..(i + 1) * stride].as_mut_ptr() as *mut libc::c_void,
                iov_len: stride,
            };
            self.direct_iovecs[2 * i + 1] = libc::iovec {
                iov_base: self.data[at + stride..at + self.slot_length].as_mut_ptr()
                    as *mut libc::c_void,
                iov_len: self.slot_length - stride,
            };
            // SAFETY: all-zero bytes are a valid msghdr.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            h.msg_iov = &mut self.direct_iovecs[2 * i];
            h.msg_iovlen = 2;
            self.headers[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
            self.receive_control(i);
        }
        let fd: RawFd = socket.as_raw_fd();
        // SAFETY: `headers[..n]` were just built; each points at two iovecs of this struct,
        // the first into `region` (borrowed mutably for the whole call, `stride` bytes per
        // datagram, disjoint and inside it as `n * stride <= region.len()`), the second into
        // this struct's slot `i` past `stride`; the kernel writes at most `iov_len` bytes
        // into each and at most `msg_namelen` bytes of address.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.received(r)
    }

    /// Takes `recvmmsg`'s result: the count received, their lengths and source lengths.
    fn received(&mut self, r: libc::c_int) -> io::Result<usize> {
        if r < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            self.lengths[i] = self.headers[i].msg_len as usize;
            self.addr_lengths[i] = self.headers[i].msg_hdr.msg_namelen;
            self.segments[i] = if self.coalescing {
                received_segment(&self.headers[i].msg_hdr)
            } else {
                0
            };
        }
        self.count = r;
        Ok(r)
    }

    /// Length of received datagram `i` (as received: at most the slot length).
    pub fn length(&self, i: usize) -> usize {
        self.lengths[i].min(self.slot_length)
    }

    /// Source of received datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: the kernel filled `addrs[i]` with `addr_lengths[i]` bytes of a socket address.
        let addr = unsafe { SockAddr::new(self.addrs[i], self.addr_lengths[i]) };
        addr.as_socket()
    }

    /// Slot `i`'s bytes (where [`Batch::datagram`] reads datagram `i`).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.slot_length;
        &mut self.data[at..at + self.slot_length]
    }

    /// Sends the unsent slots without blocking; slots pushed with `push_external` are read
    /// from `external` (the same buffer as when they were pushed, with those bytes unchanged).
    /// Returns how many went out; the rest stay queued (`has_unsent`). Resets the batch when
    /// all are sent.
    ///
    /// # Panics
    /// If an external slot lies outside `external` (a caller bug).
    pub fn send(&mut self, socket: &impl AsRawFd, external: &[u8]) -> io::Result<usize> {
        let (from, to) = (self.sent, self.count);
        if from == to {
            self.clear();
            return Ok(0);
        }
        if to - from == 1 {
            return self.send_one(socket, external);
        }
        self.receive_ready = false;
        let (headers, segmented) = if self.segmentation {
            self.prepare_segmented(from, to, external)
        } else {
            self.prepare(from, to, false, external);
            self.header_slots[from..to].fill(1);
            (to - from, false)
        };
        let fd: RawFd = socket.as_raw_fd();
        // SAFETY: `headers[from..from + headers]` are initialised by `prepare` or
        // `prepare_segmented` and point into live buffers of this struct or into `external`
        // (bounds-checked there), which is borrowed for the whole call; the kernel only reads
        // them.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.headers[from..].as_mut_ptr(),
                headers as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if segmented
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                )
            {
                // The kernel or the route does not take segmented sends (too old a kernel,
                // or datagrams longer than the route's MTU): send datagram by datagram.
                self.segmentation = false;
                return self.send(socket, external);
            }
            return Err(e);
        }
        let done = &self.header_slots[from..from + r as usize];
        let slots: usize = done.iter().sum();
        self.runs_sent += done.iter().filter(|&&k| k > 1).count() as u64;
        self.sent += slots;
        if self.sent == self.count {
            self.clear();
        }
        Ok(slots)
    }

    /// [`Batch::send`] of the one unsent datagram, with `send` (a connected socket's peer)
    /// or `sendto`: no message header for the kernel to copy in and walk, which saves about
    /// 0.1 µs a datagram on the development VM, and a request/response exchange sends one
    /// datagram at a time.
    fn send_one(&mut self, socket: &impl AsRawFd, external: &[u8]) -> io::Result<usize> {
        let i = self.sent;
        let iov = self.slot_iovec(i, false, external);
        self.header_slots[i] = 1;
        let fd: RawFd = socket.as_raw_fd();
        let flags = libc::MSG_DONTWAIT;
        // SAFETY: `iov` points at `iov_len` bytes inside this struct's slot `i` or inside
        // `external` (bounds-checked by `slot_iovec`), borrowed for the whole call; the
        // address, if any, is slot `i`'s, `addr_lengths[i]` bytes of a sockaddr_storage. The
        // kernel only reads them.
        let r = unsafe {
            if self.addr_lengths[i] == 0 {
                libc::send(fd, iov.iov_base, iov.iov_len, flags)
            } else {
                libc::sendto(
                    fd,
                    iov.iov_base,
                    iov.iov_len,
                    flags,
                    &self.addrs[i] as *const libc::sockaddr_storage as *const libc::sockaddr,
                    self.addr_lengths[i],
                )
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent += 1;
        if self.sent == self.count {
            self.clear();
        }
        Ok(1)
    }

    /// Send: passes over the first unsent datagram (or segmented run), the one the kernel
    /// refused when [`Batch::send`] returned an error other than "would block" (`sendmmsg`
    /// fails only when its first message does): the next `send` starts after it.
    pub fn skip_refused(&mut self) {
        if self.sent < self.count {
            // `header_slots[sent]`: the slots of the first header that `send` built.
            self.sent += self.header_slots[self.sent].clamp(1, self.count - self.sent);
            if self.sent == self.count {
                self.clear();
            }
        }
    }

    /// Builds send headers for slots `from..to` from `headers[from]` on, a run of external
    /// datagrams lying back to back, of one length (the last may be shorter) and for one
    /// destination in one header with a `UDP_SEGMENT` control message. Returns the headers
    /// built and whether any carries a run.
    fn prepare_segmented(&mut self, from: usize, to: usize, external: &[u8]) -> (usize, bool) {
        let mut h = from;
        let mut i = from;
        let mut any = false;
        while i < to {
            let mut j = i + 1;
            if let Some(start) = self.external[i] {
                let segment = self.lengths[i];
                let mut end = start + segment;
                let mut last = segment;
                while j < to
                    && j - i < SEGMENTS_MAX
                    && last == segment
                    && self.external[j] == Some(end)
                    && self.lengths[j] <= segment
                    && end - start + self.lengths[j] <= SEGMENTED_BYTES_MAX
                    && self.same_destination(i, j)
                {
                    last = self.lengths[j];
                    end += last;
                    j += 1;
                }
                if j - i > 1 {
                    self.iovecs[h] = libc::iovec {
                        // Bounds-checked here, so the kernel only reads inside `external`.
                        iov_base: external[start..end].as_ptr() as *mut libc::c_void,
                        iov_len: end - start,
                    };
                    self.header(h, i, self.addr_lengths[i]);
                    let c = &mut self.controls[h];
                    let space = control_message(
                        c,
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        &(segment as u16).to_ne_bytes(),
                    );
                    self.headers[h].msg_hdr.msg_control = c.0.as_mut_ptr() as *mut libc::c_void;
                    self.headers[h].msg_hdr.msg_controllen = space;
                    self.header_slots[h] = j - i;
                    any = true;
                    h += 1;
                    i = j;
                    continue;
                }
            }
            self.iovecs[h] = self.slot_iovec(i, false, external);
            self.header(h, i, self.addr_lengths[i]);
            self.header_slots[h] = 1;
            h += 1;
            i = j;
        }
        (h - from, any)
    }

    /// The iovec of slot `i`: its own bytes (a receive, or a send from the slot), or its
    /// bytes in `external` (a send pushed with `push_external`).
    fn slot_iovec(&mut self, i: usize, receiving: bool, external: &[u8]) -> libc::iovec {
        let at = i * self.slot_length;
        let base = match self.external[i] {
            // Bounds-checked here, so the kernel only ever reads inside `external`.
            Some(offset) if !receiving => {
                external[offset..offset + self.lengths[i]].as_ptr() as *mut libc::c_void
            }
            _ => self.data[at..].as_mut_ptr() as *mut libc::c_void,
        };
        libc::iovec {
            iov_base: base,
            iov_len: if receiving {
                self.slot_length
            } else {
                self.lengths[i]
            },
        }
    }

    /// Header `h` over iovec `h`, with slot `slot`'s address (`name_length` bytes of it: the
    /// address's length to send, the room for one to receive).
    fn header(&mut self, h: usize, slot: usize, name_length: libc::socklen_t) {
        // SAFETY: all-zero bytes are a valid msghdr.
        let mut m: libc::msghdr = unsafe { zeroed() };
        m.msg_namelen = name_length;
        // No address (a connected socket's peer) is a null name, which lets the kernel use the
        // socket's cached route.
        if m.msg_namelen > 0 {
            m.msg_name = &mut self.addrs[slot] as *mut libc::sockaddr_storage as *mut libc::c_void;
        }
        m.msg_iov = &mut self.iovecs[h];
        m.msg_iovlen = 1;
        self.headers[h] = libc::mmsghdr {
            msg_hdr: m,
            msg_len: 0,
        };
    }

    /// Whether slots `a` and `b` go to the same destination.
    fn same_destination(&self, a: usize, b: usize) -> bool {
        let n = self.addr_lengths[a];
        if n != self.addr_lengths[b] {
            return false;
        }
        let bytes = |i: usize| {
            // SAFETY: a sockaddr_storage is plain bytes; `n` is at most its size (`push`).
            unsafe {
                std::slice::from_raw_parts(
                    &self.addrs[i] as *const libc::sockaddr_storage as *const u8,
                    n as usize,
                )
            }
        };
        bytes(a) == bytes(b)
    }

    pub fn clear(&mut self) {
        self.count = 0;
        self.sent = 0;
    }
}

/// The segment size the kernel attached to a coalesced receive (`UDP_GRO`), or 0.
fn received_segment(h: &libc::msghdr) -> usize {
    let mut segment = 0;
    if h.msg_control.is_null() || h.msg_flags & libc::MSG_CTRUNC != 0 {
        return 0;
    }
    // SAFETY: `h` was filled by the kernel's recvmmsg: its control buffer (ours, valid) holds
    // `msg_controllen` bytes of well-formed control messages, which the CMSG macros walk.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                segment = v.max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    segment
}

/// `CLOCK_MONOTONIC` in nanoseconds (see `driver::now_ns`).
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write; CLOCK_MONOTONIC always exists,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Asks the kernel to hand runs of equal datagrams of one flow over coalesced, with their
/// segment size (`UDP_GRO`); returns whether it took the option (kernels before 5.0 do not).
pub fn enable_coalescing(socket: &impl AsRawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt with a valid pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Writes one control message (`level`, `kind`, `data`) into `c`; returns the bytes it takes.
fn control_message(c: &mut Control, level: libc::c_int, kind: libc::c_int, data: &[u8]) -> usize {
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on a length.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(data.len() as u32) as usize,
            libc::CMSG_LEN(data.len() as u32) as usize,
        )
    };
    assert!(space <= c.0.len(), "control message too long");
    c.0 = [0; 24];
    // SAFETY: `c` is 8-aligned and holds `space` bytes: a cmsghdr followed by its data.
    unsafe {
        let h = c.0.as_mut_ptr() as *mut libc::cmsghdr;
        (*h).cmsg_level = level;
        (*h).cmsg_type = kind;
        (*h).cmsg_len = len as _;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(h), data.len());
    }
    space
}

/// Waits until `socket` is readable or `timeout` has passed (`ppoll`, nanosecond timeout).
/// Returns whether it is readable. An interrupted wait (a signal) returns `Ok(false)`.
///
/// # Errors
/// A `ppoll` failure other than `EINTR`.
pub fn wait_readable(socket: &impl AsRawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call, `ts` a valid
    // timespec; a null signal mask keeps the caller's.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0 && fds[0].revents & libc::POLLIN != 0)
}
