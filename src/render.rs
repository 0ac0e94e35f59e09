//! `palisade render`: every object Palisade would create for the resources in some
//! files, computed offline with the same builders the controllers use.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crd::Tenant;
use crate::resources::quota::Usage;
use crate::resources::tenant;

/// Why a file could not be rendered. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: malformed YAML: {source}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Field(Box<FieldError>),
    #[error(
        "{path}: document {doc}: unsupported kind '{kind}' (apiVersion '{api_version}'); palisade render takes Tenant, RolePolicy and BackupSchedule of palisade.dev/v1alpha1"
    )]
    UnknownKind {
        path: PathBuf,
        doc: usize,
        api_version: String,
        kind: String,
    },
    #[error("{path}: document {doc}: not a Kubernetes object: {message}")]
    NotAnObject {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("{path}: no YAML files found")]
    Empty { path: PathBuf },
    #[error("serializing output: {0}")]
    Output(String),
}

impl RenderError {
    /// Bounded reason, for logs and exit messages.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Read { .. } => "ReadFailed",
            RenderError::Yaml { .. } => "MalformedYaml",
            RenderError::Field(_) => "InvalidField",
            RenderError::UnknownKind { .. } => "UnknownKind",
            RenderError::NotAnObject { .. } => "NotAnObject",
            RenderError::Empty { .. } => "NoInput",
            RenderError::Output(_) => "OutputFailed",
        }
    }
}

/// A field of one document that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: document {doc}: {kind} {name}: field {field}: {message}")]
pub struct FieldError {
    pub path: PathBuf,
    pub doc: usize,
    pub kind: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// A parsed input resource.
#[derive(Debug, Clone)]
pub enum Input {
    Tenant(Box<Tenant>),
    RolePolicy(Box<crate::crd::RolePolicy>),
    BackupSchedule(Box<crate::crd::BackupSchedule>),
}

/// Files under `path` (a file, or a directory read recursively), sorted.
pub fn collect_files(path: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let read_err = |source| RenderError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.metadata().map_err(read_err)?.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| RenderError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let p = entry
                .map_err(|source| RenderError::Read {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(RenderError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

fn typed<T: serde::de::DeserializeOwned>(
    path: &Path,
    doc: usize,
    kind: &str,
    value: serde_yaml::Value,
) -> Result<T, RenderError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    serde_path_to_error::deserialize(value).map_err(|e| {
        RenderError::Field(Box::new(FieldError {
            path: path.to_path_buf(),
            doc,
            kind: kind.to_string(),
            name,
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        }))
    })
}

/// The YAML documents of a file (empty ones skipped), numbered from 1.
pub fn parse_documents(
    path: &Path,
    text: &str,
) -> Result<Vec<(usize, serde_yaml::Value)>, RenderError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml::Value::deserialize(de).map_err(|source| RenderError::Yaml {
            path: path.to_path_buf(),
            doc,
            source,
        })?;
        if !value.is_null() {
            out.push((doc, value));
        }
    }
    Ok(out)
}

/// `(apiVersion, kind)` of a document, empty when absent.
pub fn type_of(value: &serde_yaml::Value) -> (String, String) {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    (field("apiVersion"), field("kind"))
}

/// The Palisade resource a document holds; `None` for any other kind.
pub fn parse_input(
    path: &Path,
    doc: usize,
    value: serde_yaml::Value,
) -> Result<Option<Input>, RenderError> {
    let (api_version, kind) = type_of(&value);
    if api_version != format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION) {
        return Ok(None);
    }
    Ok(Some(match kind.as_str() {
        "Tenant" => Input::Tenant(Box::new(typed(path, doc, &kind, value)?)),
        "RolePolicy" => Input::RolePolicy(Box::new(typed(path, doc, &kind, value)?)),
        "BackupSchedule" => Input::BackupSchedule(Box::new(typed(path, doc, &kind, value)?)),
        _ => return Ok(None),
    }))
}

/// Parses every YAML document of a file into Palisade resources.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<(usize, Input)>, RenderError> {
    let mut out = Vec::new();
    for (doc, value) in parse_documents(path, text)? {
        let (api_version, kind) = type_of(&value);
        match parse_input(path, doc, value)? {
            Some(input) => out.push((doc, input)),
            None => {
                return Err(RenderError::UnknownKind {
                    path: path.to_path_buf(),
                    doc,
                    api_version,
                    kind,
                });
            }
        }
    }
    Ok(out)
}

/// One document of the input of `palisade diff`: any kind, as JSON, with the
/// typed resource when it is one of Palisade's.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    pub doc: usize,
    pub value: serde_json::Value,
    pub input: Option<Input>,
}

/// The text of every file under `paths` (files or directories), in order;
/// `-` is standard input (as for `kubectl apply -f -`).
fn read_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, RenderError> {
    let mut out = Vec::new();
    for root in paths {
        if root.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
                RenderError::Read {
                    path: root.clone(),
                    source,
                }
            })?;
            out.push((root.clone(), text));
            continue;
        }
        for file in collect_files(root)? {
            let text = std::fs::read_to_string(&file).map_err(|source| RenderError::Read {
                path: file.clone(),
                source,
            })?;
            out.push((file, text));
        }
    }
    Ok(out)
}

/// Every document under `paths` (files or directories, as `render` reads
/// them), in order. Palisade's kinds are parsed (a wrong field names its file
/// and document); other kinds are kept as they are.
pub fn load_documents(paths: &[PathBuf]) -> Result<Vec<Document>, RenderError> {
    let mut out = Vec::new();
    for (file, text) in read_all(paths)? {
        for (doc, value) in parse_documents(&file, &text)? {
            let json = serde_json::to_value(&value).map_err(|e| RenderError::NotAnObject {
                path: file.clone(),
                doc,
                message: e.to_string(),
            })?;
            if !json.is_object() {
                return Err(RenderError::NotAnObject {
                    path: file.clone(),
                    doc,
                    message: "expected a mapping with apiVersion, kind and metadata".into(),
                });
            }
            let input = parse_input(&file, doc, value)?;
            out.push(Document {
                path: file.clone(),
                doc,
                value: json,
                input,
            });
        }
    }
    Ok(out)
}

/// Renders everything under `paths` into one multi-document YAML stream.
pub fn render_paths(paths: &[PathBuf]) -> Result<String, RenderError> {
    let mut inputs = Vec::new();
    for (file, text) in read_all(paths)? {
        for (doc, input) in parse_file(&file, &text)? {
            inputs.push((file.clone(), doc, input));
        }
    }
    // RolePolicies shape every tenant's roles, wherever they appear in the input.
    let policies: Vec<crate::crd::RolePolicy> = inputs
        .iter()
        .filter_map(|(_, _, i)| match i {
            Input::RolePolicy(p) => Some(p.as_ref().clone()),
            _ => None,
        })
        .collect();
    let mut values = Vec::new();
    for (file, doc, input) in &inputs {
        values.extend(render_input(file, *doc, input, &policies)?);
    }
    to_yaml_stream(&values)
}

/// The objects one input becomes.
pub fn render_input(
    path: &Path,
    doc: usize,
    input: &Input,
    policies: &[crate::crd::RolePolicy],
) -> Result<Vec<serde_json::Value>, RenderError> {
    match input {
        Input::Tenant(t) => {
            let plan = crate::resources::rolepolicy::plan_for(t, policies);
            let invalid = |e| invalid_field(path, doc, "Tenant", t.metadata.name.as_deref(), e);
            let valid = tenant::validate(t.metadata.name.as_deref().unwrap_or_default(), &t.spec)
                .map_err(invalid)?;
            let objects = tenant::objects(t, &valid, &Usage::new(), &plan, &Default::default());
            let mut values = objects
                .to_values()
                .map_err(|e| RenderError::Output(e.to_string()))?;
            values.extend(tenant::secret_previews(t, &valid));
            Ok(values)
        }
        // A RolePolicy's objects are the selected tenants' Roles and RoleBindings
        // (rendered with each Tenant); an invalid one is an error here.
        Input::RolePolicy(p) => match crate::resources::rolepolicy::validate(&p.spec) {
            Ok(()) => Ok(Vec::new()),
            Err(e) => Err(invalid_field(
                path,
                doc,
                "RolePolicy",
                p.metadata.name.as_deref(),
                e,
            )),
        },
        // Its Jobs exist only at run time.
        Input::BackupSchedule(_) => Ok(Vec::new()),
    }
}

fn invalid_field(
    path: &Path,
    doc: usize,
    kind: &str,
    name: Option<&str>,
    e: crate::resources::Invalid,
) -> RenderError {
    RenderError::Field(Box::new(FieldError {
        path: path.to_path_buf(),
        doc,
        kind: kind.to_string(),
        name: name.unwrap_or_default().to_string(),
        field: e.field,
        message: format!("{} ({})", e.message, e.reason),
    }))
}

/// Values as a YAML stream, each document starting with `---`.
pub fn to_yaml_stream(values: &[serde_json::Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(v).map_err(|e| RenderError::Output(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_documents_keeps_every_kind_and_parses_palisades() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n---\n---\n\
             apiVersion: palisade.dev/v1alpha1\nkind: RolePolicy\nmetadata: {name: p}\nspec: {tenants: [t]}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
        let docs = load_documents(&[dir.path().to_path_buf()]).expect("load");
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].doc, docs[0].value["kind"].as_str()),
            (1, Some("Secret"))
        );
        assert!(docs[0].input.is_none());
        assert_eq!(docs[1].doc, 3);
        assert!(matches!(docs[1].input, Some(Input::RolePolicy(_))));
        // render itself still refuses kinds it cannot render.
        let err = render_paths(&[dir.path().to_path_buf()]).expect_err("Secret");
        assert_eq!(err.reason(), "UnknownKind");
    }
}
