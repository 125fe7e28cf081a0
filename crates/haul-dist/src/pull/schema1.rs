//! Docker schema 1 images, as old registries serve them. Their layers'
//! diffIDs are unknown until the layers are unpacked; once they are, the
//! image gets what Docker builds for it too: an image config made from the
//! top layer's v1 JSON and the history, and a schema 2 manifest over the
//! same layer blobs.

use haul_oci::{media_type, Digest, Schema1Manifest};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// A schema 1 image's layers and history, bottom first.
#[derive(Debug)]
pub(crate) struct Schema1Plan {
    /// Each history entry's v1 JSON, and whether it adds no layer.
    history: Vec<(Map<String, Value>, bool)>,
    /// The layer blobs, throwaway entries left out.
    pub layers: Vec<Digest>,
}

/// Reads the layers and history of a schema 1 manifest.
pub(crate) fn plan(manifest: &Schema1Manifest, reference: &str) -> Result<Schema1Plan> {
    manifest.validate()?;
    let invalid = |message: String| Error::Inconsistent {
        reference: reference.to_string(),
        message,
    };
    let mut history = Vec::new();
    let mut layers = Vec::new();
    for (entry, layer) in manifest.history.iter().zip(&manifest.fs_layers).rev() {
        let v1: Value = serde_json::from_str(&entry.v1_compatibility)
            .map_err(|e| invalid(format!("unreadable v1Compatibility: {e}")))?;
        let Value::Object(v1) = v1 else {
            return Err(invalid(
                "a v1Compatibility entry is not a JSON object".into(),
            ));
        };
        let throwaway = v1
            .get("throwaway")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !throwaway {
            layers.push(layer.blob_sum.clone());
        }
        history.push((v1, throwaway));
    }
    Ok(Schema1Plan { history, layers })
}

impl Schema1Plan {
    /// The image config, with the layers' diffIDs (bottom first).
    pub(crate) fn config(&self, diff_ids: &[Digest]) -> Result<Vec<u8>> {
        config_from_v1_chain(&self.history, diff_ids)
    }
}

/// Docker's `MakeConfigFromV1Config` with `HistoryFromConfig`: the top v1
/// image JSON without its v1-only fields, with `rootfs` (the diffIDs) and
/// one history entry per v1 image of the chain (`history`: bottom first,
/// each with whether it adds no layer). Used for schema 1 manifests and for
/// the v1 protocol, whose images are the same v1 JSON chain.
pub(crate) fn config_from_v1_chain(
    history: &[(Map<String, Value>, bool)],
    diff_ids: &[Digest],
) -> Result<Vec<u8>> {
    let (top, _) = history.last().ok_or_else(|| Error::Invalid {
        what: "v1 image history".into(),
        reason: "it has no entries".into(),
    })?;
    let mut config = top.clone();
    for field in ["id", "parent", "Size", "parent_id", "layer_id", "throwaway"] {
        config.remove(field);
    }
    let entries: Vec<Value> = history
        .iter()
        .map(|(v1, throwaway)| {
            let mut entry = Map::new();
            for field in ["created", "author", "comment"] {
                if let Some(v) = v1
                    .get(field)
                    .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                {
                    entry.insert(field.into(), v.clone());
                }
            }
            let created_by = v1
                .get("container_config")
                .and_then(|c| c.get("Cmd"))
                .and_then(Value::as_array)
                .map(|cmd| {
                    cmd.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            if !created_by.is_empty() {
                entry.insert("created_by".into(), Value::String(created_by));
            }
            if *throwaway {
                entry.insert("empty_layer".into(), Value::Bool(true));
            }
            Value::Object(entry)
        })
        .collect();
    config.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>()}),
    );
    config.insert("history".into(), Value::Array(entries));
    config
        .entry("architecture")
        .or_insert_with(|| "amd64".into());
    config.entry("os").or_insert_with(|| "linux".into());
    serde_json::to_vec(&Value::Object(config)).map_err(|e| Error::Internal(e.to_string()))
}

/// A Docker schema 2 manifest over a config and layer blobs (digest, size).
pub(crate) fn schema2_manifest(config: (&Digest, usize), layers: &[(Digest, u64)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(digest, size)| {
            json!({"mediaType": media_type::DOCKER_LAYER_GZIP, "size": size, "digest": digest.to_string()})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "size": config.1, "digest": config.0.to_string()},
        "layers": layers,
    });
    serde_json::to_vec_pretty(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Schema1Manifest {
        let v1 = |id: &str, parent: Option<&str>, cmd: &str, throwaway: bool| {
            let mut v = json!({"id": id, "created": "2016-01-01T00:00:00Z", "container_config": {"Cmd": ["/bin/sh", "-c", cmd]}});
            if let Some(p) = parent {
                v["parent"] = json!(p);
            }
            if throwaway {
                v["throwaway"] = json!(true);
                v["architecture"] = json!("amd64");
                v["os"] = json!("linux");
                v["config"] = json!({"Cmd": ["sh"]});
            }
            json!({"v1Compatibility": v.to_string()})
        };
        let blob = |n: &str| json!({"blobSum": Digest::sha256_of(n.as_bytes()).to_string()});
        serde_json::from_value(json!({
            "schemaVersion": 1, "name": "library/x", "tag": "1", "architecture": "amd64",
            // newest first
            "fsLayers": [blob("empty"), blob("upper"), blob("base")],
            "history": [v1("c", Some("b"), "CMD sh", true), v1("b", Some("a"), "echo upper", false), v1("a", None, "ADD base", false)],
        }))
        .unwrap()
    }

    #[test]
    fn throwaway_entries_add_history_but_no_layer() {
        let plan = plan(&manifest(), "x").unwrap();
        assert_eq!(
            plan.layers,
            vec![Digest::sha256_of(b"base"), Digest::sha256_of(b"upper")]
        );
        let diff_ids = [Digest::sha256_of(b"d1"), Digest::sha256_of(b"d2")];
        let config: Value = serde_json::from_slice(&plan.config(&diff_ids).unwrap()).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][1], diff_ids[1].to_string());
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Cmd"][0], "sh");
        assert!(config.get("id").is_none() && config.get("parent").is_none());
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[0]["created_by"], "/bin/sh -c ADD base");
        assert_eq!(history[2]["empty_layer"], true);
        // The result parses as an image config with those diffIDs.
        let parsed = haul_oci::parse_image_config(plan.config(&diff_ids).unwrap()).unwrap();
        assert_eq!(parsed.diff_ids(), &diff_ids);
    }
}
