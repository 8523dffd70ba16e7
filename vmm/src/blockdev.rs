// SPDX-License-Identifier: Apache-2.0
//! Block nodes from a [`BlockdevOptions`]: the one path of QMP's `blockdev-add` and of QEMU's
//! `-blockdev` command-line option (which QEMU also reads as a `BlockdevOptions`).
//!
//! [`plan`] checks the options against the graph and says what to do: open a file (which may
//! wait as long as its storage does not answer, so `blockdev-add` runs [`OpenFile::open`] on a
//! worker thread while `-blockdev` runs it before the VM starts), or add a node built at once
//! (a `raw` node over an existing one). [`add`] then puts the node in the graph.

use std::path::PathBuf;
use std::sync::Arc;

use block::{BlockNode, CacheMode, FileNode, Locking, OpenError, RawNode};
use qapi::types::{BlockdevOptions, BlockdevOptionsBranch, OnOffAuto};

use crate::device_manager::DeviceManager;

/// A `file` node to open.
#[derive(Debug)]
pub struct OpenFile {
    /// The new node's name.
    pub node_name: String,
    /// The file.
    pub path: PathBuf,
    /// Open read-only.
    pub read_only: bool,
    /// Fall back to read-only when read-write is refused.
    pub auto_read_only: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// Image locking.
    pub locking: Locking,
    /// Open the image inactive (an incoming migration: [`FileNode::open_inactive`]).
    pub inactive: bool,
}

impl OpenFile {
    /// Opens the file (this may block on storage that does not answer).
    ///
    /// # Errors
    /// Those of [`FileNode::open_with`].
    pub fn open(self) -> Result<FileNode, OpenError> {
        let open = |read_only| {
            let open = if self.inactive {
                FileNode::open_inactive
            } else {
                FileNode::open_with
            };
            open(
                self.node_name.clone(),
                &self.path,
                read_only,
                self.cache,
                self.locking,
            )
        };
        match open(self.read_only) {
            Err(OpenError::ReadOnlyFile(..)) if self.auto_read_only && !self.read_only => {
                open(true)
            }
            other => other,
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug)]
pub enum Plan {
    /// Open this file, then [`add`] the node.
    Open(OpenFile),
    /// [`add`] this node.
    Ready(Arc<dyn BlockNode>),
}

/// Checks `options` against the graph of `devices` (QEMU's texts).
///
/// # Errors
/// `force-share`, a malformed or taken node-name, a `raw` node over a node that does not
/// exist or is read-only when it is not.
pub fn plan(devices: &DeviceManager, options: BlockdevOptions) -> Result<Plan, String> {
    if options.force_share == Some(true) {
        return Err("force-share=on is not supported: images are locked as QEMU locks them".into());
    }
    let node_name = options
        .node_name
        .clone()
        .unwrap_or_else(block::generate_node_name);
    devices
        .block_graph()
        .check_node_name(&node_name)
        .map_err(|e| e.to_string())?;
    let read_only = options.read_only.unwrap_or(false);
    match options.branch {
        BlockdevOptionsBranch::File(file) => {
            let (direct, no_flush) = options
                .cache
                .map_or((None, None), |c| (c.direct, c.no_flush));
            Ok(Plan::Open(OpenFile {
                node_name,
                path: PathBuf::from(file.filename),
                read_only,
                auto_read_only: options.auto_read_only.unwrap_or(false),
                cache: match (direct, no_flush) {
                    (_, Some(true)) => CacheMode::Unsafe,
                    (Some(true), _) => CacheMode::None,
                    _ => CacheMode::Writeback,
                },
                locking: match file.locking {
                    None | Some(OnOffAuto::Auto) => Locking::Auto,
                    Some(OnOffAuto::On) => Locking::On,
                    Some(OnOffAuto::Off) => Locking::Off,
                },
                inactive: devices.images_inactive(),
            }))
        }
        BlockdevOptionsBranch::Raw(raw) => {
            // A format node over an existing one: nothing to wait for.
            let Some(child) = devices.block_graph().node(&raw.file) else {
                return Err(format!(
                    "Cannot find device='' nor node-name='{}'",
                    raw.file
                ));
            };
            if !read_only && child.read_only() {
                return Err(format!(
                    "Block node is read-only: '{}' was opened read-only",
                    raw.file
                ));
            }
            Ok(Plan::Ready(Arc::new(RawNode::new(node_name, child))))
        }
    }
}

/// Adds a planned (and, for a file, opened) node to the graph, as made by the monitor (so
/// that `blockdev-del` may remove it once nothing uses it, as QEMU's `-blockdev` nodes).
///
/// # Errors
/// Its node-name was taken meanwhile.
pub fn add(devices: &mut DeviceManager, node: Arc<dyn BlockNode>) -> Result<(), String> {
    devices.add_monitor_node(node).map_err(|e| e.to_string())
}
