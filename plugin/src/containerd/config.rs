//! `shoald containerd-config`: containerd's configuration written for shoal.
