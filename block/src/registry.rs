// SPDX-License-Identifier: Apache-2.0
//! The block graph: backends by id and nodes by node-name, and QEMU-shaped name rules.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{Backend, BackendConfig};
use crate::file::{HandOverError, OpenError};
use crate::node::BlockNode;

/// Longest node-name QEMU accepts (its buffer holds 32 bytes with the NUL).
const MAX_NODE_NAME_LEN: usize = 31;

static NODE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Generates a node-name the way QEMU's `id_generate(ID_BLOCK)` does: `#block`, a counter
/// shared by the whole process, and two random digits (`#block008`, `#block123`, ...). The `#`
/// keeps generated names apart from user names, which must start with a letter.
pub fn generate_node_name() -> String {
    let counter = NODE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one(counter) % 100;
    format!("#block{counter}{random:02}")
}

/// A name that QEMU would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, not starting with a letter, or containing other than `[A-Za-z0-9._-]`.
    #[error("Invalid {what} '{name}': it must start with a letter and contain only letters, digits, '-', '.' and '_'")]
    Malformed {
        /// What was named (`node-name`, `id`).
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A node-name longer than 31 bytes.
    #[error("Node name '{0}' is too long (at most 31 characters)")]
    TooLong(String),
}

/// Checks a user-given id or node-name against QEMU's `id_wellformed` rule (node-names also
/// against its length limit); `what` names it in the error.
///
/// # Errors
/// The name is malformed or too long.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !well_formed {
        return Err(NameError::Malformed {
            what,
            name: name.to_string(),
        });
    }
    if what == "node-name" && name.len() > MAX_NODE_NAME_LEN {
        return Err(NameError::TooLong(name.to_string()));
    }
    Ok(())
}

/// Errors of the [`Registry`].
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A malformed id or node-name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A backend with this id exists.
    #[error("Duplicate ID '{0}' for drive")]
    DuplicateId(String),
    /// A node with this node-name exists.
    #[error("Duplicate nodes with node-name='{0}'")]
    DuplicateNodeName(String),
    /// A node-name equal to a backend id, or the reverse.
    #[error("node-name={0} is conflicting with a device id")]
    NameConflict(String),
    /// The image could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// No node has this node-name.
    #[error("Failed to find node with node-name='{0}'")]
    NoSuchNode(String),
    /// The node is (part of) a device's backend.
    #[error("Node {0} is in use")]
    NodeInUse(String),
    /// Another node is built on this one.
    #[error("Block device {0} is in use")]
    NodeIsChild(String),
    /// A device asked for a node that another device already uses (QEMU's words).
    #[error("Drive '{0}' is already in use by another device")]
    NodeTaken(String),
    /// A device asked for a node that does not exist (QEMU's words).
    #[error("Cannot find device='' nor node-name='{0}'")]
    NoSuchDrive(String),
}

/// The block graph of a VM.
#[derive(Debug, Default)]
pub struct Registry {
    backends: BTreeMap<String, Arc<Backend>>,
    nodes: BTreeMap<String, Arc<dyn BlockNode>>,
}

impl Registry {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first unused id of the form `drive<n>`.
    pub fn next_drive_id(&self) -> String {
        (0..)
            .map(|n| format!("drive{n}"))
            .find(|id| !self.backends.contains_key(id) && !self.nodes.contains_key(id))
            .unwrap_or_default()
    }

    /// Checks that `name` may name a new node: well formed (or generated) and unused.
    ///
    /// # Errors
    /// A malformed, duplicate or conflicting node-name.
    pub fn check_node_name(&self, name: &str) -> Result<(), RegistryError> {
        if !name.starts_with('#') {
            validate_name("node-name", name)?;
        }
        if self.nodes.contains_key(name) {
            return Err(RegistryError::DuplicateNodeName(name.to_string()));
        }
        if self.backends.contains_key(name) {
            return Err(RegistryError::NameConflict(name.to_string()));
        }
        Ok(())
    }

    /// Opens a backend on a raw image and adds it and its node to the graph.
    ///
    /// # Errors
    /// A malformed, duplicate or conflicting id or node-name; an image that cannot be opened.
    pub fn open(&mut self, mut config: BackendConfig) -> Result<Arc<Backend>, RegistryError> {
        validate_name("id", &config.id)?;
        if self.backends.contains_key(&config.id) {
            return Err(RegistryError::DuplicateId(config.id));
        }
        if self.nodes.contains_key(&config.id) {
            return Err(RegistryError::NameConflict(config.id));
        }
        let node_name = match config.node_name.take() {
            Some(name) => {
                // Only generated names may start with '#'.
                validate_name("node-name", &name)?;
                name
            }
            None => loop {
                let name = generate_node_name();
                if !self.nodes.contains_key(&name) {
                    break name;
                }
            },
        };
        self.check_node_name(&node_name)?;
        config.node_name = Some(node_name);
        self.add_backend(Backend::open(config)?)
    }

    /// Opens a backend `id` for a device on the existing node `node_name` (QEMU's `-device
    /// ...,drive=NODE` over `-blockdev` nodes), and adds it to the graph. `configure` sets the
    /// backend's device-side settings (serial, engine) before it is shared.
    ///
    /// # Errors
    /// A malformed or taken id, no such node, a node another backend uses, or an eventfd that
    /// cannot be created.
    pub fn attach(
        &mut self,
        id: &str,
        node_name: &str,
        configure: impl FnOnce(Backend) -> Backend,
    ) -> Result<Arc<Backend>, RegistryError> {
        validate_name("id", id)?;
        let node = self
            .node(node_name)
            .ok_or_else(|| RegistryError::NoSuchDrive(node_name.to_string()))?;
        let taken = self.backends.values().any(|b| {
            let mut n = Some(b.root());
            while let Some(cur) = n {
                if Arc::ptr_eq(&cur, &node) {
                    return true;
                }
                n = cur.child();
            }
            false
        });
        if taken {
            return Err(RegistryError::NodeTaken(node_name.to_string()));
        }
        let backend = Backend::new(id, node)
            .map_err(|e| RegistryError::Open(OpenError::Io(node_name.into(), e)))?;
        self.add_backend(configure(backend))
    }

    /// Adds a backend built by the caller, with every node of its chain not yet in the graph.
    ///
    /// # Errors
    /// A duplicate or conflicting id or node-name.
    pub fn add_backend(&mut self, backend: Backend) -> Result<Arc<Backend>, RegistryError> {
        let id = backend.id().to_string();
        if self.backends.contains_key(&id) {
            return Err(RegistryError::DuplicateId(id));
        }
        if self.nodes.contains_key(&id) {
            return Err(RegistryError::NameConflict(id));
        }
        let mut chain = Vec::new();
        let mut next = Some(backend.root());
        while let Some(node) = next {
            next = node.child();
            match self.nodes.get(node.node_name()) {
                Some(known) if Arc::ptr_eq(known, &node) => {}
                Some(_) => {
                    return Err(RegistryError::DuplicateNodeName(
                        node.node_name().to_string(),
                    ))
                }
                None => chain.push(node),
            }
        }
        for node in chain {
            self.nodes.insert(node.node_name().to_string(), node);
        }
        let backend = Arc::new(backend);
        self.backends.insert(id, backend.clone());
        Ok(backend)
    }

    /// Adds a node (e.g. a filter about to be inserted above a backend's root).
    ///
    /// # Errors
    /// A malformed, duplicate or conflicting node-name.
    pub fn add_node(&mut self, node: Arc<dyn BlockNode>) -> Result<(), RegistryError> {
        self.check_node_name(node.node_name())?;
        self.nodes.insert(node.node_name().to_string(), node);
        Ok(())
    }

    /// The backend named `id`.
    pub fn backend(&self, id: &str) -> Option<Arc<Backend>> {
        self.backends.get(id).cloned()
    }

    /// The node named `node_name`.
    pub fn node(&self, node_name: &str) -> Option<Arc<dyn BlockNode>> {
        self.nodes.get(node_name).cloned()
    }

    /// Every backend, by id.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }

    /// Every node, by node-name.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<dyn BlockNode>> {
        self.nodes.values()
    }

    /// Removes a node that no backend and no other node uses (QMP's `blockdev-del`); returns
    /// it, so that the caller decides where its file is closed.
    ///
    /// # Errors
    /// No such node, or the node is in use.
    pub fn remove_node(&mut self, node_name: &str) -> Result<Arc<dyn BlockNode>, RegistryError> {
        let node = self
            .nodes
            .get(node_name)
            .cloned()
            .ok_or_else(|| RegistryError::NoSuchNode(node_name.to_string()))?;
        let in_chain = |start: Arc<dyn BlockNode>| {
            let mut n = Some(start);
            while let Some(cur) = n {
                if Arc::ptr_eq(&cur, &node) {
                    return true;
                }
                n = cur.child();
            }
            false
        };
        if self.backends.values().any(|b| in_chain(b.root())) {
            return Err(RegistryError::NodeInUse(node_name.to_string()));
        }
        let is_child = self
            .nodes
            .values()
            .filter_map(|n| n.child())
            .any(|c| Arc::ptr_eq(&c, &node));
        if is_child {
            return Err(RegistryError::NodeIsChild(node_name.to_string()));
        }
        self.nodes.remove(node_name);
        Ok(node)
    }

    /// The graph's image nodes (those without a child: `file` nodes), by node-name.
    fn image_nodes(&self) -> impl Iterator<Item = &Arc<dyn BlockNode>> {
        self.nodes.values().filter(|n| n.child().is_none())
    }

    /// Hands every image over (the source's switchover): flushes each writable image and
    /// releases its locks ([`BlockNode::inactivate`]). If one fails, the images already
    /// handed over are taken back, so the graph is as it was.
    ///
    /// # Errors
    /// The node-name of the image that failed, and why.
    pub fn inactivate_all(&self) -> Result<(), (String, HandOverError)> {
        let mut done: Vec<&Arc<dyn BlockNode>> = Vec::new();
        for node in self.image_nodes() {
            if !node.is_active() {
                continue;
            }
            if let Err(e) = node.inactivate() {
                for n in done {
                    // Best effort: nobody else can have taken the locks meanwhile, as the
                    // other side activates only once the hand-over succeeded.
                    let _ = n.activate();
                }
                return Err((node.node_name().to_owned(), e));
            }
            done.push(node);
        }
        Ok(())
    }

    /// Takes every image over ([`BlockNode::activate`]): the destination's switchover, or the
    /// source's when a migration failed after [`Registry::inactivate_all`]. Every image is
    /// tried; the first failure is returned and the images that failed stay inactive.
    ///
    /// # Errors
    /// The node-name of the first image that failed, and why (another user holds its locks).
    pub fn activate_all(&self) -> Result<(), (String, HandOverError)> {
        let mut first = None;
        for node in self.image_nodes() {
            if let Err(e) = node.activate() {
                first.get_or_insert((node.node_name().to_owned(), e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether every image is active.
    pub fn all_active(&self) -> bool {
        self.image_nodes().all(|n| n.is_active())
    }

    /// Removes a backend and the nodes of its chain that no other backend uses.
    pub fn remove_backend(&mut self, id: &str) -> Option<Arc<Backend>> {
        let backend = self.backends.remove(id)?;
        let mut next = Some(backend.root());
        while let Some(node) = next {
            next = node.child();
            let shared = self.backends.values().any(|b| {
                let mut n = Some(b.root());
                while let Some(cur) = n {
                    if Arc::ptr_eq(&cur, &node) {
                        return true;
                    }
                    n = cur.child();
                }
                false
            });
            if !shared {
                self.nodes.remove(node.node_name());
            }
        }
        Some(backend)
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn image() -> TempFile {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![0u8; 4096]).unwrap();
        f
    }

    #[test]
    fn generated_names_have_qemus_shape() {
        let a = generate_node_name();
        let b = generate_node_name();
        assert_ne!(a, b);
        for n in [a, b] {
            let digits = n.strip_prefix("#block").unwrap();
            assert!(
                digits.len() >= 3 && digits.bytes().all(|c| c.is_ascii_digit()),
                "{n}"
            );
        }
    }

    #[test]
    fn names_follow_qemus_rules() {
        validate_name("id", "drive0").unwrap();
        validate_name("node-name", "my.node_1-x").unwrap();
        for bad in ["", "0drive", "#block1", "a b", "ä"] {
            assert!(validate_name("id", bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_name("node-name", &"a".repeat(32)),
            Err(NameError::TooLong("a".repeat(32)))
        );
        validate_name("id", &"a".repeat(40)).unwrap();
    }

    #[test]
    fn registry_looks_up_and_rejects_duplicates() {
        let f = image();
        let mut r = Registry::new();
        assert_eq!(r.next_drive_id(), "drive0");
        let b0 = r.open(BackendConfig::new("drive0", f.as_path())).unwrap();
        assert_eq!(r.next_drive_id(), "drive1");
        let generated = b0.root().node_name().to_string();
        assert!(generated.starts_with("#block"));
        assert!(Arc::ptr_eq(&r.backend("drive0").unwrap(), &b0));
        assert!(r.node(&generated).is_some());

        // Another image: a read-only user of drive0's would conflict with its writer.
        let g = image();
        let b1 = r
            .open(BackendConfig {
                node_name: Some("disk1".into()),
                read_only: true,
                ..BackendConfig::new("drive1", g.as_path())
            })
            .unwrap();
        assert!(b1.read_only());
        assert_eq!(r.backends().count(), 2);
        assert_eq!(r.nodes().count(), 2);

        let e = r
            .open(BackendConfig::new("drive0", f.as_path()))
            .unwrap_err();
        assert!(matches!(e, RegistryError::DuplicateId(_)), "{e}");
        let e = r
            .open(BackendConfig {
                node_name: Some("disk1".into()),
                ..BackendConfig::new("drive2", f.as_path())
            })
            .unwrap_err();
        assert!(matches!(e, RegistryError::DuplicateNodeName(_)), "{e}");
        let e = r
            .open(BackendConfig {
                node_name: Some("drive0".into()),
                ..BackendConfig::new("drive2", f.as_path())
            })
            .unwrap_err();
        assert!(matches!(e, RegistryError::NameConflict(_)), "{e}");
        let e = r
            .open(BackendConfig::new("disk1", f.as_path()))
            .unwrap_err();
        assert!(matches!(e, RegistryError::NameConflict(_)), "{e}");
        let e = r
            .open(BackendConfig {
                node_name: Some("#block1".into()),
                ..BackendConfig::new("drive2", f.as_path())
            })
            .unwrap_err();
        assert!(matches!(e, RegistryError::Name(_)), "{e}");
        let e = r.open(BackendConfig::new("9x", f.as_path())).unwrap_err();
        assert!(matches!(e, RegistryError::Name(_)), "{e}");
        let e = r
            .open(BackendConfig::new("drive2", "/nonexistent/x.img"))
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Open(OpenError::NotFound(_))),
            "{e}"
        );
        // drive0 holds its image's write lock: a second writer is refused.
        let e = r
            .open(BackendConfig::new("drive2", f.as_path()))
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Open(OpenError::Locked { .. })),
            "{e}"
        );
        // Failures left nothing behind.
        assert_eq!(r.nodes().count(), 2);

        assert!(r.remove_backend("drive0").is_some());
        assert!(r.node(&generated).is_none());
        assert!(r.backend("drive0").is_none());
        assert_eq!(r.next_drive_id(), "drive0");
        // Removing drive0 closed its image and released the lock.
        drop(b0);
        r.open(BackendConfig::new("drive2", f.as_path())).unwrap();
    }

    #[test]
    fn attach_puts_a_backend_on_an_existing_node() {
        let f = image();
        let mut r = Registry::new();
        let file: Arc<dyn BlockNode> = Arc::new(
            crate::FileNode::open("f0", f.as_path(), false, crate::CacheMode::Writeback).unwrap(),
        );
        r.add_node(file.clone()).unwrap();
        r.add_node(Arc::new(crate::RawNode::new("fmt0", file)))
            .unwrap();
        let b = r
            .attach("disk0", "fmt0", |b| b.with_serial(Some("SN".into())))
            .unwrap();
        assert_eq!((b.id(), b.serial()), ("disk0", "SN"));
        assert_eq!(b.root().node_name(), "fmt0");
        assert_eq!(b.size(), 4096);
        let msg = |e: RegistryError| e.to_string();
        assert_eq!(
            msg(r.attach("disk1", "fmt0", |b| b).unwrap_err()),
            "Drive 'fmt0' is already in use by another device"
        );
        // The node below is part of disk0's chain too.
        assert_eq!(
            msg(r.attach("disk1", "f0", |b| b).unwrap_err()),
            "Drive 'f0' is already in use by another device"
        );
        assert_eq!(
            msg(r.attach("disk1", "nope", |b| b).unwrap_err()),
            "Cannot find device='' nor node-name='nope'"
        );
        assert_eq!(
            msg(r.attach("disk0", "f0", |b| b).unwrap_err()),
            "Drive 'f0' is already in use by another device"
        );
        assert!(matches!(
            r.attach("0bad", "f0", |b| b),
            Err(RegistryError::Name(_))
        ));
        // The graph's nodes cannot be removed while the device uses them.
        assert!(matches!(
            r.remove_node("fmt0"),
            Err(RegistryError::NodeInUse(_))
        ));
    }

    #[test]
    fn remove_node_refuses_nodes_in_use() {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![0u8; 4096]).unwrap();
        let g = TempFile::new().unwrap();
        std::fs::write(g.as_path(), vec![0u8; 4096]).unwrap();
        let mut r = Registry::new();
        let b = r
            .open(BackendConfig {
                node_name: Some("disk0".into()),
                ..BackendConfig::new("drive0", f.as_path())
            })
            .unwrap();
        let file: Arc<dyn BlockNode> = Arc::new(
            crate::FileNode::open("f1", g.as_path(), true, crate::CacheMode::Writeback).unwrap(),
        );
        r.add_node(file.clone()).unwrap();
        r.add_node(Arc::new(crate::RawNode::new("r1", file)))
            .unwrap();
        let msg = |e: RegistryError| e.to_string();
        assert_eq!(
            msg(r.remove_node("nope").unwrap_err()),
            "Failed to find node with node-name='nope'"
        );
        assert_eq!(
            msg(r.remove_node("disk0").unwrap_err()),
            "Node disk0 is in use"
        );
        assert_eq!(
            msg(r.remove_node("f1").unwrap_err()),
            "Block device f1 is in use"
        );
        assert_eq!(r.remove_node("r1").unwrap().node_name(), "r1");
        assert_eq!(r.remove_node("f1").unwrap().node_name(), "f1");
        assert!(r.node("f1").is_none());
        drop(b);
    }

    #[test]
    fn the_graph_hands_its_images_over() {
        let a = image();
        let b = image();
        let mut src = Registry::new();
        let mut dst = Registry::new();
        for (reg, inactive) in [(&mut src, false), (&mut dst, true)] {
            for (id, f) in [("d0", &a), ("d1", &b)] {
                reg.open(BackendConfig {
                    node_name: Some(format!("{id}-file")),
                    inactive,
                    ..BackendConfig::new(id, f.as_path())
                })
                .unwrap();
            }
        }
        assert!(src.all_active() && !dst.all_active());
        let (node, e) = dst.activate_all().unwrap_err();
        assert_eq!(node, "d0-file");
        assert!(matches!(e, HandOverError::Lock(_)), "{e}");
        src.inactivate_all().unwrap();
        assert!(!src.all_active());
        dst.activate_all().unwrap();
        assert!(dst.all_active());
        assert!(src.activate_all().is_err());
        dst.inactivate_all().unwrap();
        src.activate_all().unwrap();
        assert!(src.all_active());
    }
}
