//! A custom [`ProgressOutput`]: pulls an image and keeps, per layer, only
//! the last record, printing one summary line per layer at the end. This is
//! how an embedder draws its own UI: the library never prints.
//!
//! ```sh
//! cargo run -p haul-dist --example progress -- 127.0.0.1:5000/library/app:1.0 /tmp/store
//! ```

// A program of its own: it prints its results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use haul_dist::oci::Reference;
use haul_dist::registry::{ClientConfig, RegistryClient};
use haul_dist::store::Store;
use haul_dist::xfer::{Progress, ProgressOutput};
use haul_dist::{CancellationToken, PullOptions, PullSettings, Puller};

/// Remembers the latest record of every id. Records of one transfer arrive
/// in order; a slow output may miss intermediate ones but never the last.
#[derive(Default)]
struct LastRecordPerLayer {
    last: Mutex<BTreeMap<String, Progress>>,
}

impl ProgressOutput for LastRecordPerLayer {
    fn write(&self, progress: Progress) {
        let mut last = self.last.lock().expect("not poisoned");
        last.insert(progress.id.clone(), progress);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(reference), Some(root)) = (args.next(), args.next()) else {
        return Err("usage: progress REFERENCE STORE_DIR".into());
    };
    let reference = Reference::parse(&reference)?;
    let puller = Puller::new(
        RegistryClient::new(ClientConfig::default())?,
        Store::open(&root)?,
        &PullSettings::default(),
    );
    let output = Arc::new(LastRecordPerLayer::default());
    puller
        .pull(
            &reference,
            &PullOptions::default(),
            output.clone(),
            CancellationToken::new(),
        )
        .await?;
    for (id, record) in output.last.lock().expect("not poisoned").iter() {
        println!("{id:>12}  {record:?}");
    }
    Ok(())
}
