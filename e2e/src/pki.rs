//! The cluster's certificates, keys and kubeconfigs, made fresh by every `cluster up`.
//!
//! One CA signs everything: the apiserver's and the node agent's serving certificates and a
//! client certificate per control-plane identity, so RBAC sees the same users a kubeadm
//! cluster has (`system:kube-controller-manager`, `system:kube-scheduler`, `system:kube-proxy`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::netplan::{APISERVER_PORT, HOST_IP, NODE_IP};

/// A client identity: certificate common name and organisations (RBAC user and groups).
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// File stem and kubeconfig name.
    pub name: &'static str,
    /// The certificate CN, which the apiserver takes as the user name.
    pub user: &'static str,
    /// The certificate O fields, which the apiserver takes as groups.
    pub groups: &'static [&'static str],
}

/// The cluster administrator (kubectl, tests, helm).
pub const ADMIN: Identity = Identity {
    name: "admin",
    user: "kubernetes-admin",
    groups: &["system:masters"],
};
/// kube-controller-manager's own identity, bound by the default RBAC policy.
pub const CONTROLLER_MANAGER: Identity = Identity {
    name: "kube-controller-manager",
    user: "system:kube-controller-manager",
    groups: &[],
};
/// kube-scheduler's own identity, bound by the default RBAC policy.
pub const SCHEDULER: Identity = Identity {
    name: "kube-scheduler",
    user: "system:kube-scheduler",
    groups: &[],
};
/// kube-proxy's own identity, bound to `system:node-proxier` by the default RBAC policy.
pub const PROXY: Identity = Identity {
    name: "kube-proxy",
    user: "system:kube-proxy",
    groups: &[],
};
/// The node agent. It drives several Nodes from one process, so it cannot be a single
/// `system:node:<name>` identity as the Node authorizer wants; it is an administrator.
pub const NODE_AGENT: Identity = Identity {
    name: "node-agent",
    user: "system:hotload-node-agent",
    groups: &["system:masters"],
};
/// How the apiserver authenticates to the node agent's kubelet API (logs).
pub const APISERVER_KUBELET_CLIENT: Identity = Identity {
    name: "apiserver-kubelet-client",
    user: "kube-apiserver-kubelet-client",
    groups: &["system:masters"],
};

/// Paths of the generated files.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The PKI kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<name>.crt`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    /// `<name>.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.cert("ca")
    }

    /// The kubeconfig of an identity.
    pub fn kubeconfig(&self, who: &Identity) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", who.name))
    }

    /// Writes a new CA, serving certificates, client identities with kubeconfigs, and the
    /// service-account signing key pair.
    pub fn generate(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hotload-e2e-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write(&self.ca(), &ca_cert.pem())?;
        write(&self.key("ca"), &ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        let apiserver_sans = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "198.19.0.1",
        ]
        .iter()
        .map(ToString::to_string)
        .chain([NODE_IP.to_string(), HOST_IP.to_string()])
        .collect::<Vec<_>>();
        self.leaf(
            &issuer,
            "apiserver",
            "kube-apiserver",
            &[],
            apiserver_sans,
            true,
        )?;
        self.leaf(
            &issuer,
            "kubelet",
            "hotload-node-agent",
            &[],
            vec![NODE_IP.to_string()],
            true,
        )?;
        for who in [
            ADMIN,
            CONTROLLER_MANAGER,
            SCHEDULER,
            PROXY,
            NODE_AGENT,
            APISERVER_KUBELET_CLIENT,
        ] {
            self.leaf(&issuer, who.name, who.user, who.groups, Vec::new(), false)?;
            self.write_kubeconfig(&who)?;
        }

        let sa_key = KeyPair::generate()?;
        write(&self.key("service-account"), &sa_key.serialize_pem())?;
        write(
            &self.dir.join("service-account.pub"),
            &sa_key.public_key_pem(),
        )?;
        Ok(())
    }

    fn leaf(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        name: &str,
        common_name: &str,
        groups: &[&str],
        sans: Vec<String>,
        server: bool,
    ) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, issuer)?;
        write(&self.cert(name), &cert.pem())?;
        write(&self.key(name), &key.serialize_pem())
    }

    fn write_kubeconfig(&self, who: &Identity) -> Result<()> {
        let config = kubeconfig(
            &format!("https://{NODE_IP}:{APISERVER_PORT}"),
            &self.ca(),
            &self.cert(who.name),
            &self.key(who.name),
        );
        write(&self.kubeconfig(who), &config)
    }
}

/// A kubeconfig (JSON, which every YAML reader accepts) for one server and client certificate.
pub fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hotload-e2e", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "hotload-e2e", "user": {
            "client-certificate": cert,
            "client-key": key,
        }}],
        "contexts": [{"name": "hotload-e2e", "context": {
            "cluster": "hotload-e2e",
            "user": "hotload-e2e",
            "namespace": "default",
        }}],
        "current-context": "hotload-e2e",
    });
    format!("{config:#}\n")
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
