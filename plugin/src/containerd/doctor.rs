//! `shoald doctor`: checks what a running containerd really does with shoal.
