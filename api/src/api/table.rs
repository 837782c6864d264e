//! `meta.k8s.io/v1` Table rendering for `kubectl get`: the server computes every cell
//! (kubectl-wire.md §3). Columns with priority 1 appear only with `-o wide`.
//!
//! Each kind's printer (Kubernetes' `TableConvertor`) is a [`Printer`] whose column list and
//! cell function have the same length by type, so the two can never disagree; the kinds table
//! in `resources` names the printer of each kind.

use serde_json::{json, Value};

use super::object::{human_age, str_at};

/// One column of a kind's table.
#[derive(Debug)]
pub struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        priority,
    }
}

impl Column {
    /// A column named `name` of the table type `kind` (`string`, `integer`, `date`...),
    /// shown only with `-o wide` when `priority` is above 0.
    pub const fn new(name: &'static str, kind: &'static str, priority: u8) -> Column {
        col(name, kind, priority)
    }
}

/// How a kind reads in `kubectl get`: its columns and the cells of one object.
pub trait TableConvertor: Sync {
    fn columns(&self) -> &[Column];
    fn cells(&self, object: &Value) -> Vec<Value>;
}

/// A printer of `N` columns: `cells` returns exactly one value per column.
pub struct Printer<const N: usize> {
    columns: [Column; N],
    cells: fn(&Value) -> [Value; N],
}

impl<const N: usize> TableConvertor for Printer<N> {
    fn columns(&self) -> &[Column] {
        &self.columns
    }

    fn cells(&self, object: &Value) -> Vec<Value> {
        (self.cells)(object).into()
    }
}

/// The NAME cell.
fn name(o: &Value) -> Value {
    json!(str_at(o, "/metadata/name"))
}

/// The AGE cell.
fn age(o: &Value) -> Value {
    json!(human_age(str_at(o, "/metadata/creationTimestamp")))
}

/// An integer field, 0 when absent.
fn number(o: &Value, pointer: &str) -> Value {
    json!(integer(o, pointer))
}

fn integer(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Kinds without printer of their own: name and age, as Kubernetes' default table.
pub static NAME_AGE: Printer<2> = Printer {
    columns: [col("Name", "string", 0), col("Age", "string", 0)],
    cells: |o| [name(o), age(o)],
};

pub static POD: Printer<9> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Status", "string", 0),
        col("Restarts", "string", 0),
        col("Age", "string", 0),
        col("IP", "string", 1),
        col("Node", "string", 1),
        col("Nominated Node", "string", 1),
        col("Readiness Gates", "string", 1),
    ],
    cells: pod_cells,
};

pub static NODE: Printer<10> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Roles", "string", 0),
        col("Age", "string", 0),
        col("Version", "string", 0),
        col("Internal-IP", "string", 1),
        col("External-IP", "string", 1),
        col("OS-Image", "string", 1),
        col("Kernel-Version", "string", 1),
        col("Container-Runtime", "string", 1),
    ],
    cells: node_cells,
};

pub static NAMESPACE: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| [name(o), json!(str_at(o, "/status/phase")), age(o)],
};

pub static EVENT: Printer<5> = Printer {
    columns: [
        col("Last Seen", "string", 0),
        col("Type", "string", 0),
        col("Reason", "string", 0),
        col("Object", "string", 0),
        col("Message", "string", 0),
    ],
    cells: event_cells,
};

fn event_cells(o: &Value) -> [Value; 5] {
    let last = [
        str_at(o, "/lastTimestamp"),
        str_at(o, "/eventTime"),
        str_at(o, "/metadata/creationTimestamp"),
    ]
    .into_iter()
    .find(|t| !t.is_empty())
    .unwrap_or("");
    let object = format!(
        "{}/{}",
        str_at(o, "/involvedObject/kind").to_lowercase(),
        str_at(o, "/involvedObject/name")
    );
    [
        json!(human_age(last)),
        json!(str_at(o, "/type")),
        json!(str_at(o, "/reason")),
        json!(object),
        json!(str_at(o, "/message")),
    ]
}

pub static LEASE: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Holder", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| [name(o), json!(str_at(o, "/spec/holderIdentity")), age(o)],
};

/// `kubectl get pdb`.
pub static POD_DISRUPTION_BUDGET: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Min Available", "string", 0),
        col("Max Unavailable", "string", 0),
        col("Allowed Disruptions", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let field = |pointer: &str| match o.pointer(pointer) {
            Some(Value::String(s)) => json!(s),
            Some(Value::Number(n)) => json!(n.to_string()),
            _ => json!("N/A"),
        };
        [
            name(o),
            field("/spec/minAvailable"),
            field("/spec/maxUnavailable"),
            number(o, "/status/disruptionsAllowed"),
            age(o),
        ]
    },
};

/// `kubectl get hpa`.
pub static HORIZONTAL_POD_AUTOSCALER: Printer<7> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Reference", "string", 0),
        col("Targets", "string", 0),
        col("MinPods", "string", 0),
        col("MaxPods", "integer", 0),
        col("Replicas", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let min = match o.pointer("/spec/minReplicas").and_then(Value::as_i64) {
            Some(min) => min.to_string(),
            None => "<unset>".into(),
        };
        [
            name(o),
            json!(format!(
                "{}/{}",
                str_at(o, "/spec/scaleTargetRef/kind"),
                str_at(o, "/spec/scaleTargetRef/name")
            )),
            json!(super::autoscaling::targets(o)),
            json!(min),
            number(o, "/spec/maxReplicas"),
            number(o, "/status/currentReplicas"),
            age(o),
        ]
    },
};

/// `kubectl get priorityclass`.
pub static PRIORITY_CLASS: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Value", "integer", 0),
        col("Global-Default", "boolean", 0),
        col("Age", "string", 0),
        col("PreemptionPolicy", "string", 0),
    ],
    cells: |o| {
        [
            name(o),
            o.get("value").cloned().unwrap_or(json!(0)),
            json!(o
                .get("globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age(o),
            json!(str_at(o, "/preemptionPolicy")),
        ]
    },
};

/// `kubectl get quota`: each limit as `used/hard`, requests and counts apart from limits.
pub static RESOURCE_QUOTA: Printer<4> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Age", "string", 0),
        col("Request", "string", 0),
        col("Limit", "string", 0),
    ],
    cells: |o| {
        let hard = o
            .pointer("/status/hard")
            .or_else(|| o.pointer("/spec/hard"));
        let (mut request, mut limit) = (Vec::new(), Vec::new());
        for (name, amount) in hard.and_then(Value::as_object).into_iter().flatten() {
            let used = o
                .pointer(&format!(
                    "/status/used/{}",
                    name.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .unwrap_or("0");
            let entry = format!("{name}: {used}/{}", amount.as_str().unwrap_or(""));
            if name.starts_with("limits.") {
                limit.push(entry);
            } else {
                request.push(entry);
            }
        }
        [
            name(o),
            age(o),
            json!(request.join(", ")),
            json!(limit.join(", ")),
        ]
    },
};

/// `kubectl get pv`: capacity, access modes (abbreviated), reclaim policy, phase and claim.
pub static PERSISTENT_VOLUME: Printer<8> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Capacity", "string", 0),
        col("Access Modes", "string", 0),
        col("Reclaim Policy", "string", 0),
        col("Status", "string", 0),
        col("Claim", "string", 0),
        col("StorageClass", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let modes: Vec<&str> = o
            .pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|mode| match mode {
                "ReadWriteOnce" => "RWO",
                "ReadOnlyMany" => "ROX",
                "ReadWriteMany" => "RWX",
                "ReadWriteOncePod" => "RWOP",
                other => other,
            })
            .collect();
        let claim = match str_at(o, "/spec/claimRef/name") {
            "" => String::new(),
            name => format!("{}/{name}", str_at(o, "/spec/claimRef/namespace")),
        };
        [
            name(o),
            json!(str_at(o, "/spec/capacity/storage")),
            json!(modes.join(",")),
            json!(str_at(o, "/spec/persistentVolumeReclaimPolicy")),
            json!(str_at(o, "/status/phase")),
            json!(claim),
            json!(str_at(o, "/spec/storageClassName")),
            age(o),
        ]
    },
};

/// `kubectl get csr`: who asked, for which signer, and where it stands.
pub static CERTIFICATE_SIGNING_REQUEST: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Age", "string", 0),
        col("SignerName", "string", 0),
        col("Requestor", "string", 0),
        col("Condition", "string", 0),
    ],
    cells: |o| {
        let conditions: Vec<&str> = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c["status"] != "False")
            .filter_map(|c| c["type"].as_str())
            .collect();
        let mut condition = if conditions.is_empty() {
            "Pending".to_string()
        } else {
            conditions.join(",")
        };
        if o.pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
        {
            condition.push_str(",Issued");
        }
        [
            name(o),
            age(o),
            json!(str_at(o, "/spec/signerName")),
            json!(str_at(o, "/spec/username")),
            json!(condition),
        ]
    },
};

/// `kubectl get netpol`: the pods a policy selects.
pub static NETWORK_POLICY: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Pod-Selector", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let selector = o
            .pointer("/spec/podSelector")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .map(|s| super::selector::query_of(&s))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        [name(o), json!(selector), age(o)]
    },
};

pub static ROLE_BINDING: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Role", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let role = format!(
            "{}/{}",
            str_at(o, "/roleRef/kind"),
            str_at(o, "/roleRef/name")
        );
        [name(o), json!(role), age(o)]
    },
};

pub static CONFIG_MAP: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Data", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let count = ["data", "binaryData"]
            .iter()
            .filter_map(|k| o.get(*k)?.as_object().map(|m| m.len()))
            .sum::<usize>();
        [name(o), json!(count), age(o)]
    },
};

pub static DEPLOYMENT: Printer<8> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Up-to-date", "integer", 0),
        col("Available", "integer", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
        col("Selector", "string", 1),
    ],
    cells: |o| {
        let (names, images) = template_containers(o);
        let ready = integer(o, "/status/readyReplicas");
        let wanted = integer(o, "/spec/replicas");
        [
            name(o),
            json!(format!("{ready}/{wanted}")),
            number(o, "/status/updatedReplicas"),
            number(o, "/status/availableReplicas"),
            age(o),
            json!(names),
            json!(images),
            json!(super::selector::match_labels_of(o)),
        ]
    },
};

/// ReplicaSets and ReplicationControllers.
pub static REPLICA_SET: Printer<8> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Desired", "integer", 0),
        col("Current", "integer", 0),
        col("Ready", "integer", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
        col("Selector", "string", 1),
    ],
    cells: |o| {
        let (names, images) = template_containers(o);
        [
            name(o),
            number(o, "/spec/replicas"),
            number(o, "/status/replicas"),
            number(o, "/status/readyReplicas"),
            age(o),
            json!(names),
            json!(images),
            json!(super::selector::match_labels_of(o)),
        ]
    },
};

pub static JOB: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Completions", "string", 0),
        col("Duration", "string", 0),
        col("Age", "string", 0),
    ],
    cells: job_cells,
};

fn job_cells(o: &Value) -> [Value; 5] {
    let conditions = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    let status = if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else {
        "Running"
    };
    let succeeded = integer(o, "/status/succeeded");
    let completions = o
        .pointer("/spec/completions")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let time = |pointer: &str| {
        o.pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let duration = match (time("/status/startTime"), time("/status/completionTime")) {
        (Some(s), Some(e)) => super::object::human_duration((e - s).num_seconds()),
        (Some(s), None) => super::object::human_duration(
            (chrono::Utc::now() - s.with_timezone(&chrono::Utc)).num_seconds(),
        ),
        _ => String::new(),
    };
    [
        name(o),
        json!(status),
        json!(format!("{succeeded}/{completions}")),
        json!(duration),
        age(o),
    ]
}

pub static DAEMON_SET: Printer<7> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Desired", "integer", 0),
        col("Current", "integer", 0),
        col("Ready", "integer", 0),
        col("Up-to-date", "integer", 0),
        col("Available", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        [
            name(o),
            number(o, "/status/desiredNumberScheduled"),
            number(o, "/status/currentNumberScheduled"),
            number(o, "/status/numberReady"),
            number(o, "/status/updatedNumberScheduled"),
            number(o, "/status/numberAvailable"),
            age(o),
        ]
    },
};

pub static SERVICE: Printer<7> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Type", "string", 0),
        col("Cluster-IP", "string", 0),
        col("External-IP", "string", 0),
        col("Port(s)", "string", 0),
        col("Age", "string", 0),
        col("Selector", "string", 1),
    ],
    cells: service_cells,
};

pub static INGRESS: Printer<6> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Class", "string", 0),
        col("Hosts", "string", 0),
        col("Address", "string", 0),
        col("Ports", "string", 0),
        col("Age", "string", 0),
    ],
    cells: ingress_cells,
};

pub static ENDPOINT_SLICE: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("AddressType", "string", 0),
        col("Ports", "string", 0),
        col("Endpoints", "string", 0),
        col("Age", "string", 0),
    ],
    cells: endpoint_slice_cells,
};

fn endpoint_slice_cells(o: &Value) -> [Value; 5] {
    let list = |pointer: &str, field: &str| -> Vec<String> {
        (o.pointer(pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten())
        .filter_map(|item| match item.get(field)? {
            Value::Array(values) => Some(
                (values.iter().filter_map(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            value => Some(value.to_string()),
        })
        .collect()
    };
    let ports = list("/ports", "port");
    let ports = if ports.is_empty() {
        "<unset>".to_string()
    } else {
        ports.join(",")
    };
    [
        name(o),
        json!(str_at(o, "/addressType")),
        json!(ports),
        json!(first_three(&list("/endpoints", "addresses"))),
        age(o),
    ]
}

pub static ENDPOINTS: Printer<3> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Endpoints", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let mut addresses = Vec::new();
        for subset in o
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ports: Vec<i64> = (subset.get("ports").and_then(Value::as_array))
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .collect();
            for address in (subset.get("addresses").and_then(Value::as_array))
                .into_iter()
                .flatten()
            {
                for port in &ports {
                    addresses.push(format!("{}:{port}", str_at(address, "/ip")));
                }
            }
        }
        [name(o), json!(first_three(&addresses)), age(o)]
    },
};

pub static STATEFUL_SET: Printer<5> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
    ],
    cells: |o| {
        let (names, images) = template_containers(o);
        let ready = integer(o, "/status/readyReplicas");
        let wanted = integer(o, "/spec/replicas");
        [
            name(o),
            json!(format!("{ready}/{wanted}")),
            age(o),
            json!(names),
            json!(images),
        ]
    },
};

pub static CONTROLLER_REVISION: Printer<4> = Printer {
    columns: [
        col("Name", "string", 0),
        col("Controller", "string", 0),
        col("Revision", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o| {
        let owner = o
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
            .map(|r| {
                let kind = str_at(r, "/kind").to_lowercase();
                let group = str_at(r, "/apiVersion").split_once('/').map(|(g, _)| g);
                match group {
                    Some(group) => format!("{kind}.{group}/{}", str_at(r, "/name")),
                    None => format!("{kind}/{}", str_at(r, "/name")),
                }
            })
            .unwrap_or_else(|| "<none>".into());
        [name(o), json!(owner), number(o, "/revision"), age(o)]
    },
};

/// `kubectl get svc` cells: ports as `80/TCP` or `80:30080/TCP` with a node port.
/// Up to three items, then how many more (how kubectl shows endpoints).
fn first_three(items: &[String]) -> String {
    match items.len() {
        0 => "<none>".to_string(),
        n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
        _ => items.join(","),
    }
}

/// `kubectl get ingress`: class, the rules' hosts, the load balancer's addresses, and 80 (plus
/// 443 with TLS).
fn ingress_cells(o: &Value) -> [Value; 6] {
    let array = |pointer: &str| {
        o.pointer(pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    let hosts: Vec<&str> = array("/spec/rules")
        .map(|r| r.get("host").and_then(Value::as_str).unwrap_or("*"))
        .collect();
    let addresses: Vec<&str> = array("/status/loadBalancer/ingress")
        .filter_map(|i| i.get("ip").or_else(|| i.get("hostname"))?.as_str())
        .collect();
    let class = o
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let tls = array("/spec/tls").next().is_some();
    [
        name(o),
        json!(class),
        json!(if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        }),
        json!(addresses.join(",")),
        json!(if tls { "80, 443" } else { "80" }),
        age(o),
    ]
}

fn service_cells(o: &Value) -> [Value; 7] {
    let ports: Vec<String> = (o.pointer("/spec/ports").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let external = (o
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array))
    .into_iter()
    .flatten()
    .filter_map(|i| i.get("ip").and_then(Value::as_str))
    .collect::<Vec<_>>()
    .join(",");
    let type_ = str_at(o, "/spec/type");
    let external = match (external.is_empty(), type_) {
        (false, _) => external,
        (true, "LoadBalancer") => "<pending>".into(),
        _ => "<none>".into(),
    };
    let selector = (o.pointer("/spec/selector").and_then(Value::as_object))
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "<none>".into());
    [
        name(o),
        json!(type_),
        json!(str_at(o, "/spec/clusterIP")),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(o),
        json!(selector),
    ]
}

/// The comma-separated container names and images of a workload's pod template.
fn template_containers(workload: &Value) -> (String, String) {
    let containers = workload
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// Renders objects of one kind as a Table. With `include_object`, each row carries the full
/// object (`includeObject=Object`, used by `--sort-by`); otherwise its metadata only.
pub fn render(
    printer: &dyn TableConvertor,
    objects: &[&Value],
    revision: u64,
    include_object: bool,
) -> Value {
    let definitions: Vec<Value> = printer
        .columns()
        .iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.kind, "format": format, "description": c.name, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(printer, o, include_object))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn row(printer: &dyn TableConvertor, object: &Value, include_object: bool) -> Value {
    // Cells come from the full object; the row's object is metadata unless asked otherwise.
    let row_cells = printer.cells(object);
    let row_object = if include_object {
        object.clone()
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object.get("metadata").cloned().unwrap_or(json!({}))})
    };
    json!({"cells": row_cells, "object": row_object})
}

fn pod_cells(o: &Value) -> [Value; 9] {
    let summary = PodSummary::of(o);
    let node = str_at(o, "/spec/nodeName");
    let ip = str_at(o, "/status/podIP");
    [
        name(o),
        json!(format!("{}/{}", summary.ready, summary.total)),
        json!(summary.status),
        json!(summary.restarts.to_string()),
        age(o),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!("<none>"),
        json!("<none>"),
    ]
}

/// The READY, STATUS and RESTARTS columns of a pod, following kubectl's printer: sidecars
/// (init containers with `restartPolicy: Always`) count among the containers; a pod still
/// initializing shows `Init:N/M` or its init container's trouble; otherwise a waiting or
/// terminated container's reason beats the phase; a terminating pod says so.
struct PodSummary {
    ready: usize,
    total: usize,
    status: String,
    restarts: i64,
}

impl PodSummary {
    fn of(o: &Value) -> Self {
        let list = |pointer: &str| -> &[Value] {
            o.pointer(pointer)
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice)
        };
        let init_specs = list("/spec/initContainers");
        let is_sidecar = |name: &str| {
            init_specs
                .iter()
                .any(|c| c["name"] == name && super::pod_requests::is_sidecar_json(c))
        };
        let sidecars = init_specs
            .iter()
            .filter(|c| super::pod_requests::is_sidecar_json(c))
            .count();
        let restart_count = |s: &Value| s["restartCount"].as_i64().unwrap_or(0);
        let phase = str_at(o, "/status/phase");
        let mut summary = Self {
            ready: 0,
            total: list("/spec/containers").len() + sidecars,
            status: match str_at(o, "/status/reason") {
                "" => phase.to_string(),
                reason => reason.to_string(),
            },
            restarts: 0,
        };
        let mut sidecar_restarts = 0;
        let mut initializing = false;
        for (i, status) in list("/status/initContainerStatuses").iter().enumerate() {
            summary.restarts += restart_count(status);
            let name = str_at(status, "/name");
            if is_sidecar(name) {
                sidecar_restarts += restart_count(status);
            }
            let terminated = status.pointer("/state/terminated");
            let waiting = str_at(status, "/state/waiting/reason");
            if terminated.is_some_and(|t| t["exitCode"].as_i64() == Some(0)) {
                continue;
            }
            if is_sidecar(name) && status["started"].as_bool() == Some(true) {
                summary.ready += usize::from(status["ready"].as_bool() == Some(true));
                continue;
            }
            summary.status = if let Some(terminated) = terminated {
                match str_at(terminated, "/reason") {
                    "" => format!(
                        "Init:ExitCode:{}",
                        terminated["exitCode"].as_i64().unwrap_or(0)
                    ),
                    reason => format!("Init:{reason}"),
                }
            } else if !waiting.is_empty() && waiting != "PodInitializing" {
                format!("Init:{waiting}")
            } else {
                format!("Init:{i}/{}", init_specs.len())
            };
            initializing = true;
            break;
        }
        let initialized = list("/status/conditions")
            .iter()
            .any(|c| c["type"] == "Initialized" && c["status"] == "True");
        if !initializing || initialized {
            summary.restarts = sidecar_restarts;
            let mut running = false;
            for status in list("/status/containerStatuses").iter().rev() {
                summary.restarts += restart_count(status);
                let waiting = str_at(status, "/state/waiting/reason");
                let terminated = status.pointer("/state/terminated");
                if !waiting.is_empty() {
                    summary.status = waiting.to_string();
                } else if let Some(terminated) = terminated {
                    summary.status = match str_at(terminated, "/reason") {
                        "" => format!("ExitCode:{}", terminated["exitCode"].as_i64().unwrap_or(0)),
                        reason => reason.to_string(),
                    };
                } else if status["ready"].as_bool() == Some(true)
                    && status.pointer("/state/running").is_some()
                {
                    running = true;
                    summary.ready += 1;
                }
            }
            if summary.status == "Completed" && running {
                let ready = list("/status/conditions")
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                summary.status = if ready { "Running" } else { "NotReady" }.into();
            }
        }
        let deleting = o
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        if deleting && !matches!(phase, "Succeeded" | "Failed") {
            summary.status = "Terminating".into();
        }
        summary
    }
}

/// The STATUS column of a pod, as kubectl prints it.
pub fn pod_status_reason(o: &Value) -> String {
    PodSummary::of(o).status
}

fn node_cells(o: &Value) -> [Value; 10] {
    let conditions = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    let mut status = match ready.map(|c| str_at(c, "/status")) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let address = |kind: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == kind))
            .map(|x| str_at(x, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    [
        name(o),
        json!(status),
        json!("<none>"),
        age(o),
        json!(str_at(o, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(str_at(o, "/status/nodeInfo/osImage")),
        json!(str_at(o, "/status/nodeInfo/kernelVersion")),
        json!(str_at(o, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_row_reads_like_kubectl() {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded", "podIP": "10.244.0.2", "containerStatuses": [
                {"name": "c", "ready": false, "restartCount": 2, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            ]}
        });
        let table = render(&POD, &[&pod], 7, false);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "0/1");
        assert_eq!(cells[2], "Completed");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.244.0.2");
        assert_eq!(cells[6], "n1");
        assert_eq!(table["columnDefinitions"][0]["format"], "name");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn ingresses_and_slices_read_like_kubectl() {
        let ingress = json!({"metadata": {"name": "shop"}, "spec": {"rules": [{"host": "a.test"}, {"http": {}}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}});
        let cells = &render(&INGRESS, &[&ingress], 1, false)["rows"][0]["cells"];
        assert_eq!(
            cells.as_array().unwrap()[..5],
            [
                json!("shop"),
                json!("<none>"),
                json!("a.test,*"),
                json!("127.0.0.1"),
                json!("80")
            ]
        );
        let slice = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        let cells = &render(&ENDPOINT_SLICE, &[&slice], 1, false)["rows"][0]["cells"];
        assert_eq!(
            cells.as_array().unwrap()[..4],
            [
                json!("web-abcde"),
                json!("IPv4"),
                json!("8080"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
            ]
        );
    }

    #[test]
    fn init_containers_and_sidecars_read_like_kubectl() {
        let spec = json!({"initContainers": [
            {"name": "setup"},
            {"name": "cache", "restartPolicy": "Always"},
        ], "containers": [{"name": "app"}]});
        let cells = |status: Value| {
            let pod = json!({"metadata": {"name": "p"}, "spec": spec, "status": status});
            let row = &render(&POD, &[&pod], 1, false)["rows"][0]["cells"];
            (row[1].clone(), row[2].clone(), row[3].clone())
        };
        let running = json!({"running": {}});
        // The first init container still runs: Init:0/2, the sidecar counted in READY's total.
        assert_eq!(
            cells(json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "setup", "state": running, "restartCount": 0},
                {"name": "cache", "state": {"waiting": {"reason": "PodInitializing"}}},
            ]})),
            (json!("0/2"), json!("Init:0/2"), json!("0"))
        );
        // A failing init container's reason.
        assert_eq!(
            cells(json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "setup", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 3},
            ]})).1,
            json!("Init:CrashLoopBackOff")
        );
        // Running: the started, ready sidecar counts as ready and its restarts show.
        assert_eq!(
            cells(json!({"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [
                    {"name": "setup", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}, "restartCount": 1},
                    {"name": "cache", "state": running, "started": true, "ready": true, "restartCount": 2},
                ],
                "containerStatuses": [{"name": "app", "state": running, "ready": true, "restartCount": 1}]})),
            (json!("2/2"), json!("Running"), json!("3"))
        );
    }

    #[test]
    fn waiting_reason_and_terminating_win() {
        let mut pod = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}});
        assert_eq!(pod_status_reason(&pod), "ErrImagePull");
        pod["metadata"] = json!({"deletionTimestamp": "2020-01-01T00:00:00Z"});
        assert_eq!(pod_status_reason(&pod), "Terminating");
    }
}
