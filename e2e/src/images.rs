//! Container images → host binaries. There is no container engine on this machine, so an
//! image stands for a program that is already built: its entrypoint binary, default
//! arguments (the image's CMD), and the directory its own paths resolve in.
//!
//! A pod's `command[0]` names a path inside the image (`/hotload-sidecar`); its file name is
//! looked up among the image's binaries first and on the host's PATH second, so both
//! `command: [/app/server]` and `command: [sh, -c, …]` work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What one image runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The binary the image's ENTRYPOINT runs.
    pub entrypoint: PathBuf,
    /// The image's default CMD.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The map the node agent reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMap {
    /// Image reference (as written in the pod spec) → image.
    pub images: BTreeMap<String, Image>,
}

/// Why a container's image cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// No binary is mapped for the image.
    #[error("image {0:?} is not in the node's image map (no binary is mapped for it)")]
    Unknown(String),
    /// The mapped binary does not exist.
    #[error("image {image:?} maps to {path}, which does not exist")]
    Missing {
        /// The image reference.
        image: String,
        /// The mapped path.
        path: String,
    },
    /// Neither command nor image gives anything to run.
    #[error("container {0:?} has no command to run")]
    NoCommand(String),
}

impl ImageMap {
    /// Reads a map written by [`ImageMap::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the map as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Adds `IMAGE=BINARY[ ARG…]` (space-separated default arguments).
    pub fn add_mapping(&mut self, mapping: &str) -> Result<()> {
        let Some((image, program)) = mapping.split_once('=') else {
            bail!("image mapping {mapping:?} is not IMAGE=BINARY");
        };
        let mut words = program.split_whitespace();
        let entrypoint = words
            .next()
            .with_context(|| format!("image mapping {mapping:?} names no binary"))?;
        self.images.insert(
            image.to_string(),
            Image {
                entrypoint: entrypoint.into(),
                args: words.map(String::from).collect(),
            },
        );
        Ok(())
    }

    /// The argv a container runs, following Kubernetes' rules: `command` replaces the
    /// entrypoint (and drops the CMD), `args` replaces the CMD.
    pub fn resolve(
        &self,
        container: &str,
        image: &str,
        command: &[String],
        args: Option<&[String]>,
        host_path: &str,
    ) -> Result<Vec<String>, ImageError> {
        let mapped = self
            .images
            .get(image)
            .ok_or_else(|| ImageError::Unknown(image.to_string()))?;
        if !mapped.entrypoint.exists() {
            return Err(ImageError::Missing {
                image: image.to_string(),
                path: mapped.entrypoint.display().to_string(),
            });
        }
        let mut argv: Vec<String> = match command.split_first() {
            Some((program, rest)) => std::iter::once(self.program(mapped, program, host_path))
                .chain(rest.iter().cloned())
                .collect(),
            None => std::iter::once(mapped.entrypoint.display().to_string())
                .chain(
                    args.is_none()
                        .then(|| mapped.args.clone())
                        .into_iter()
                        .flatten(),
                )
                .collect(),
        };
        argv.extend(args.unwrap_or_default().iter().cloned());
        if argv.is_empty() {
            return Err(ImageError::NoCommand(container.to_string()));
        }
        Ok(argv)
    }

    /// An image path → host path: the image's own binary by file name, else the host's PATH.
    fn program(&self, image: &Image, program: &str, host_path: &str) -> String {
        let name = Path::new(program).file_name().unwrap_or_default();
        if image.entrypoint.file_name() == Some(name) {
            return image.entrypoint.display().to_string();
        }
        host_path
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| candidate.is_file())
            .map(|found| found.display().to_string())
            .unwrap_or_else(|| program.to_string())
    }
}

/// The images every local cluster maps: the e2e test server (this binary).
pub fn default_images() -> Result<ImageMap> {
    let exe = std::env::current_exe().context("locating hotload-e2e itself")?;
    let mut map = ImageMap::default();
    map.images.insert(
        TESTSERVER_IMAGE.to_string(),
        Image {
            entrypoint: exe.clone(),
            args: vec!["testserver".to_string()],
        },
    );
    // Hotload's own images are the workspace binaries built next to this one.
    for (image, binary, args) in HOTLOAD_IMAGES {
        map.images.insert(
            image.to_string(),
            Image {
                entrypoint: exe.with_file_name(binary),
                args: args.iter().map(|a| a.to_string()).collect(),
            },
        );
    }
    Ok(map)
}

/// The Dockerfile of each Hotload image, relative to the repository root.
pub const DOCKERFILES: [(&str, &str); 3] = [
    ("hotload/sidecar:dev", "plugin-sidecar/Dockerfile"),
    ("hotload/demo-app:dev", "examples/demo-app/Dockerfile"),
    ("hotload/operator:dev", "operator/Dockerfile"),
];

/// The ENTRYPOINT and CMD of a Dockerfile (exec form), the last of each.
pub fn dockerfile_command(text: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut entrypoint = Vec::new();
    let mut cmd = Vec::new();
    for line in text.lines().map(str::trim) {
        let parse = |rest: &str| -> Result<Vec<String>> {
            serde_json::from_str(rest.trim())
                .with_context(|| format!("{line:?} is not in exec form"))
        };
        if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = parse(rest)?;
        } else if let Some(rest) = line.strip_prefix("CMD ") {
            cmd = parse(rest)?;
        }
    }
    Ok((entrypoint, cmd))
}

/// The image of the e2e test server.
pub const TESTSERVER_IMAGE: &str = "hotload/e2e-testserver:dev";

/// Hotload's images as the Dockerfiles build them: image, binary, default CMD. A test
/// checks each against its Dockerfile ([`DOCKERFILES`]).
pub const HOTLOAD_IMAGES: [(&str, &str, &[&str]); 3] = [
    ("hotload/sidecar:dev", "hotload-sidecar", &["run"]),
    (
        "hotload/demo-app:dev",
        "hotload-demo-app",
        &["--listen=0.0.0.0:8080"],
    ),
    ("hotload/operator:dev", "hotload-operator", &["run"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_images_run_what_the_dockerfiles_run() {
        for (image, dockerfile) in DOCKERFILES {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dockerfile);
            let text = std::fs::read_to_string(&path).unwrap();
            let (entrypoint, cmd) = dockerfile_command(&text).unwrap();
            let (_, binary, args) = HOTLOAD_IMAGES.iter().find(|(i, ..)| *i == image).unwrap();
            assert_eq!(
                entrypoint,
                [format!("/{binary}")],
                "{dockerfile} ENTRYPOINT"
            );
            assert_eq!(cmd, *args, "{dockerfile} CMD");
        }
    }

    fn map() -> ImageMap {
        let mut map = ImageMap::default();
        map.images.insert(
            "app:1".into(),
            Image {
                entrypoint: "/bin/true".into(),
                args: vec!["serve".into()],
            },
        );
        map
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn image_defaults_run_entrypoint_with_cmd() {
        let argv = map().resolve("c", "app:1", &[], None, "/bin").unwrap();
        assert_eq!(argv, strings(&["/bin/true", "serve"]));
    }

    #[test]
    fn args_replace_cmd_and_command_replaces_entrypoint() {
        let args = strings(&["--port", "80"]);
        let argv = map()
            .resolve("c", "app:1", &[], Some(&args), "/bin")
            .unwrap();
        assert_eq!(argv, strings(&["/bin/true", "--port", "80"]));

        let command = strings(&["/usr/local/bin/true", "x"]);
        let argv = map().resolve("c", "app:1", &command, None, "/bin").unwrap();
        assert_eq!(
            argv,
            strings(&["/bin/true", "x"]),
            "image binary found by file name"
        );

        let command = strings(&["sh", "-c", "exit 0"]);
        let argv = map()
            .resolve("c", "app:1", &command, None, "/bin:/usr/bin")
            .unwrap();
        assert_eq!(
            argv,
            strings(&["/bin/sh", "-c", "exit 0"]),
            "other programs come from PATH"
        );
    }

    #[test]
    fn unknown_image_is_a_named_error() {
        let err = map()
            .resolve("c", "nginx:latest", &[], None, "/bin")
            .unwrap_err();
        assert_eq!(err, ImageError::Unknown("nginx:latest".into()));
        assert!(err.to_string().contains("nginx:latest"));
    }

    #[test]
    fn mappings_parse_binary_and_default_args() {
        let mut map = ImageMap::default();
        map.add_mapping("hotload/operator:dev=/opt/op run --json")
            .unwrap();
        let image = &map.images["hotload/operator:dev"];
        assert_eq!(image.entrypoint, PathBuf::from("/opt/op"));
        assert_eq!(image.args, strings(&["run", "--json"]));
        assert!(map.add_mapping("no-equals-sign").is_err());
    }
}
