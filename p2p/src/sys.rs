//! The crate's raw system calls (DESIGN "Conventions": `unsafe` in one module).

use std::os::fd::AsRawFd;

/// Sets TCP_NOTSENT_LOWAT on `tcp`: the socket takes more bytes to send only while fewer
/// than `bytes` of what it holds are unsent.
pub(crate) fn limit_unsent(tcp: &tokio::net::TcpStream, bytes: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `tcp` is an open socket, borrowed for the call; the option is an int and the
    // length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of_val(&value) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_unsent_limit_is_set_on_a_connection() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        super::limit_unsent(&tcp, 128 << 10).unwrap();
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of_val(&value) as libc::socklen_t;
        // SAFETY: reading an int option of an open socket into an int of that size.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                std::ptr::addr_of_mut!(value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(value, 128 << 10);
    }
}
