// SPDX-License-Identifier: Apache-2.0
//! The `raw` format node: the image's bytes as they are, over a protocol node (QEMU's
//! `raw-format.c` without `offset`/`size`). Everything is forwarded to the child.

use std::sync::Arc;

use crate::node::BlockNode;

/// A `raw` format node over `child`.
#[derive(Debug)]
pub struct RawNode {
    name: String,
    child: Arc<dyn BlockNode>,
}

impl RawNode {
    /// A raw node named `name` over `child`.
    pub fn new(name: impl Into<String>, child: Arc<dyn BlockNode>) -> Self {
        Self {
            name: name.into(),
            child,
        }
    }
}

impl BlockNode for RawNode {
    fn node_name(&self) -> &str {
        &self.name
    }

    fn driver(&self) -> &str {
        "raw"
    }

    fn child(&self) -> Option<Arc<dyn BlockNode>> {
        Some(self.child.clone())
    }

    fn filename(&self) -> Option<&std::path::Path> {
        None
    }

    fn host_file(&self) -> Option<crate::file::HostFile> {
        self.child.host_file()
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::node::{CacheMode, IoBuf};
    use crate::FileNode;

    #[test]
    fn forwards_to_its_child() {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![7u8; 4096]).unwrap();
        let file: Arc<dyn BlockNode> =
            Arc::new(FileNode::open("f0", f.as_path(), false, CacheMode::Writeback).unwrap());
        let raw = RawNode::new("r0", file.clone());
        assert_eq!((raw.node_name(), raw.driver()), ("r0", "raw"));
        assert_eq!(raw.size(), 4096);
        assert!(!raw.read_only());
        let mut buf = vec![0u8; 512];
        raw.read_vectored(512, &[IoBuf::from(buf.as_mut_slice())])
            .unwrap();
        assert_eq!(buf, vec![7u8; 512]);
        assert!(Arc::ptr_eq(&raw.child().unwrap(), &file));
    }
}
