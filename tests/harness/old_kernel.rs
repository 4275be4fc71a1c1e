//! A broker that meets a kernel older than 6.16, which has no `SO_PASSRIGHTS`: fds a client
//! sends do reach the broker there. To run that path on a newer kernel,
//! [`start_broker_without_so_passrights`] starts the real broker under a seccomp filter that
//! answers `setsockopt(SO_PASSRIGHTS)` with `ENOPROTOOPT`, exactly what an older kernel says.

use crate::{Broker, BrokerOptions};

/// Starts the broker (reachable by nobody) as if the kernel had no `SO_PASSRIGHTS`: under a
/// seccomp filter, inherited by the broker, that fails `setsockopt(SOL_SOCKET, 83)` with
/// `ENOPROTOOPT`. The filter is installed on a thread of its own, which starts the broker and
/// then stays until the returned guard is dropped (the harness ties the broker's life to the
/// thread that started it, with PR_SET_PDEATHSIG).
pub fn start_broker_without_so_passrights(config: &str) -> (Broker, std::sync::mpsc::Sender<()>) {
    let config = config.to_string();
    let (give, take) = std::sync::mpsc::channel();
    let (guard, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        deny_so_passrights_in_this_thread();
        let broker = Broker::start_with(BrokerOptions {
            config: Some(&config),
            world_searchable_dir: true,
            ..BrokerOptions::default()
        });
        let _ = give.send(broker);
        let _ = released.recv(); // returns once the guard is dropped
    });
    let broker = take
        .recv()
        .expect("the broker started under the seccomp filter");
    (broker, guard)
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
const SO_PASSRIGHTS: u32 = 83;

fn deny_so_passrights_in_this_thread() {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump_eq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first).
    let mut filter = [
        load(4),
        jump_eq(AUDIT_ARCH, 0, 5),
        load(0),
        jump_eq(libc::SYS_setsockopt as u32, 0, 3),
        load(16 + 8 * 2),
        jump_eq(SO_PASSRIGHTS, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOPROTOOPT as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `program` points at `filter`, both live for the call, which
    // copies them. The filter only makes one setsockopt option fail. no_new_privs (this thread
    // and its children only) lets a normal user install it too.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "set no_new_privs: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            std::ptr::addr_of!(program),
        )
    };
    assert_eq!(
        rc,
        0,
        "install the seccomp filter: {}",
        std::io::Error::last_os_error()
    );
}
