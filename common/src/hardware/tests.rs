use super::*;
use proptest::prelude::*;

/// An H100 node shaped from `shared/reference/nvml-h100.txt`.
pub(crate) fn h100_gpu(index: u32) -> GpuInfo {
    let mut unavailable = BTreeMap::new();
    unavailable.insert(
        "retired_pages".to_string(),
        "the requested operation is not available on the target device".to_string(),
    );
    unavailable.insert(
        "fan_speed_percent".to_string(),
        "a supplied argument was invalid".into(),
    );
    GpuInfo {
        index,
        uuid: format!("GPU-ac4c1e76-751c-bc26-d792-348cec96634{index}"),
        name: Some("NVIDIA H100 80GB HBM3".into()),
        serial: Some(format!("175262402287{index}")),
        pci_bus_id: Some(format!("00000000:00:0{}.0", index + 6)),
        architecture: Some("Hopper".into()),
        compute_capability: Some("9.0".into()),
        vbios_version: Some("96.00.DA.00.0C".into()),
        board_part_number: Some("695-2G520-0200-000".into()),
        memory: GpuMemory {
            total_bytes: Some(85_520_809_984),
            used_bytes: Some(0),
            free_bytes: Some(85_017_493_504),
            reserved_bytes: Some(503_316_480),
        },
        utilization_gpu_percent: Some(0),
        utilization_memory_percent: Some(0),
        temperature_c: Some(38),
        fan_speed_percent: None,
        power_draw_mw: Some(125_408),
        power_limit_mw: Some(700_000),
        performance_state: Some("P0".into()),
        clocks: GpuClocks {
            graphics_mhz: Some(1980),
            sm_mhz: Some(1980),
            memory_mhz: Some(2619),
            max_graphics_mhz: Some(1980),
            max_sm_mhz: Some(1980),
            max_memory_mhz: Some(2619),
        },
        ecc: GpuEcc {
            enabled: Some(true),
            pending_enabled: Some(true),
            volatile_corrected: Some(0),
            volatile_uncorrected: Some(0),
            aggregate_corrected: Some(0),
            aggregate_uncorrected: Some(0),
        },
        retired_pages: None,
        remapped_rows: Some(RemappedRows::default()),
        mig: Some(MigState {
            current: false,
            pending: false,
        }),
        persistence_mode: Some(true),
        pcie: GpuPcie {
            link_gen: Some(5),
            link_width: Some(16),
            max_link_gen: Some(5),
            max_link_width: Some(16),
        },
        compute_processes: Some(vec![]),
        throttle_reasons: Some(vec![]),
        unavailable,
        health: GpuHealth::healthy(),
    }
}

pub(crate) fn h100_node(gpus: u32) -> HardwareReport {
    HardwareReport {
        hostname: "gpu-node-1".into(),
        os: OsInfo {
            name: Some("Ubuntu".into()),
            version: Some("24.04".into()),
            kernel: Some("6.18.44-fc-v657-gpu".into()),
            arch: "x86_64".into(),
            uptime_s: 3600,
            boot_time_unix: 1_795_000_000,
            load_avg: LoadAvg {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            },
        },
        cpu: CpuInfo {
            brand: "Intel(R) Xeon(R) Processor".into(),
            vendor: "GenuineIntel".into(),
            logical_cores: 16,
            physical_cores: Some(8),
            frequency_mhz: 2100,
            usage_percent: 3.5,
        },
        memory: MemoryInfo {
            total_bytes: 135_148_564_480,
            available_bytes: 134_658_191_360,
            used_bytes: 490_373_120,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
        },
        disks: vec![DiskInfo {
            name: "/dev/nvme0n1p1".into(),
            mount_point: "/".into(),
            file_system: "ext4".into(),
            kind: DiskKind::Ssd,
            total_bytes: 1 << 40,
            available_bytes: 1 << 39,
            read_only: false,
        }],
        network: vec![NetworkInterface {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            addresses: vec!["10.0.0.5/24".into(), "fe80::1/64".into()],
            mtu: 1500,
            link_speed_mbps: Some(100_000),
            rx_bytes: 1000,
            tx_bytes: 2000,
        }],
        dmi: DmiInfo {
            product_name: Some("Standard PC".into()),
            serial: None,
        },
        gpus: (0..gpus).map(h100_gpu).collect(),
        nvml: NvmlInfo {
            available: true,
            status: NvmlStatus::Ok,
            reason: None,
            driver_version: Some("580.159.04".into()),
            nvml_version: Some("13.580.159.04".into()),
            cuda_driver_version: Some("13.0".into()),
        },
    }
}

#[test]
fn memory_classes() {
    const G: f64 = (1u64 << 30) as f64;
    let class = |gib: f64| memory_class_gib((gib * G) as u64);
    assert_eq!(memory_class_gib(135_148_564_480), 128);
    assert_eq!(class(125.9), 128);
    assert_eq!(class(128.0), 128);
    assert_eq!(class(94.0), 96);
    assert_eq!(class(62.7), 64);
    assert_eq!(class(503.7), 512);
    assert_eq!(class(251.5), 256);
    assert_eq!(class(15.5), 16);
    assert_eq!(class(7.7), 8);
    assert_eq!(class(3.7), 4);
    assert_eq!(class(1007.0), 1024);
    assert_eq!(memory_class_gib(0), 0);
}

#[test]
fn model_string() {
    let a = h100_node(8);
    assert_eq!(
        a.model(),
        "Intel(R) Xeon(R) Processor / 16 cores / 128 GiB / 8x NVIDIA H100 80GB HBM3"
    );

    // An identical machine: other serials, host name, a few MB less RAM, other readings.
    let mut b = h100_node(8);
    b.hostname = "gpu-node-2".into();
    b.memory.total_bytes -= 7 << 20;
    b.cpu.usage_percent = 90.0;
    b.cpu.brand = "  Intel(R)  Xeon(R) Processor ".into();
    for g in &mut b.gpus {
        g.serial = Some("other".into());
        g.uuid.push('x');
        g.temperature_c = Some(70);
    }
    assert_eq!(a.model(), b.model());

    // Fewer GPUs, another GPU, mixed GPUs, no GPU, other memory: all differ.
    let mut models = vec![a.model(), h100_node(4).model(), h100_node(0).model()];
    let mut l4 = h100_node(2);
    l4.gpus
        .iter_mut()
        .for_each(|g| g.name = Some("NVIDIA L4".into()));
    models.push(l4.model());
    let mut mixed = h100_node(2);
    mixed.gpus[1].name = Some("NVIDIA L4".into());
    models.push(mixed.model());
    let mut small = h100_node(8);
    small.memory.total_bytes /= 2;
    models.push(small.model());
    let mut cores = h100_node(8);
    cores.cpu.logical_cores = 32;
    models.push(cores.model());
    let n = models.len();
    models.sort();
    models.dedup();
    assert_eq!(models.len(), n, "{models:#?}");
    assert!(h100_node(0).model().ends_with("/ no GPU"));
    assert!(mixed
        .model()
        .ends_with("/ 1x NVIDIA H100 80GB HBM3 + 1x NVIDIA L4"));
}

#[test]
fn bincode_round_trip() {
    let cfg = bincode::config::standard();
    for report in [HardwareReport::default(), h100_node(0), h100_node(8)] {
        let bytes = bincode::serde::encode_to_vec(&report, cfg).unwrap();
        let (back, used): (HardwareReport, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, report);
    }
    let mut delta = h100_node(8).diff(&h100_node(0)).unwrap();
    delta.nvml = Some(NvmlInfo::default());
    let bytes = bincode::serde::encode_to_vec(&delta, cfg).unwrap();
    let (back, _): (HardwareDelta, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
    assert_eq!(back, delta);
}

#[test]
fn json_round_trip_and_shape() {
    let mut report = h100_node(2);
    report.gpus[1].health = GpuHealth::new(HealthState::Unhealthy, "XID 79");
    report.nvml.status = NvmlStatus::Unresponsive;
    let text = serde_json::to_string_pretty(&report).unwrap();
    let back: HardwareReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);

    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    for k in [
        "hostname", "os", "cpu", "memory", "disks", "network", "dmi", "gpus", "nvml",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
    }
    assert_eq!(v["nvml"]["status"], "unresponsive");
    assert_eq!(v["gpus"][1]["health"]["state"], "unhealthy");
    assert_eq!(v["gpus"][1]["health"]["reason"], "XID 79");
    assert_eq!(
        v["gpus"][0]["unavailable"]["fan_speed_percent"],
        "a supplied argument was invalid"
    );
    assert_eq!(v["gpus"][0]["fan_speed_percent"], serde_json::Value::Null);
    assert_eq!(v["disks"][0]["kind"], "ssd");
    assert_eq!(v["os"]["load_avg"]["one"], 0.5);
    assert_eq!(v["dmi"]["serial"], serde_json::Value::Null);
}

#[test]
fn readings_health() {
    let mut g = h100_gpu(0);
    assert_eq!(g.readings_health(), GpuHealth::healthy());
    g.remapped_rows = Some(RemappedRows {
        pending: true,
        ..Default::default()
    });
    assert_eq!(g.readings_health().state, HealthState::Unhealthy);
    g.remapped_rows = Some(RemappedRows {
        failure: true,
        ..Default::default()
    });
    assert_eq!(
        g.readings_health().reason.as_deref(),
        Some("row remapping failed")
    );
    g.remapped_rows = None;
    g.retired_pages = Some(RetiredPages {
        pending: Some(true),
        ..Default::default()
    });
    assert_eq!(g.readings_health().state, HealthState::Unhealthy);

    let mut h = GpuHealth::new(HealthState::Warning, "first");
    h.merge(GpuHealth::new(HealthState::Warning, "second"));
    assert_eq!(h.reason.as_deref(), Some("first"));
    h.merge(GpuHealth::new(HealthState::Unhealthy, "worse"));
    assert_eq!(h.state, HealthState::Unhealthy);
    h.merge(GpuHealth::healthy());
    assert_eq!(h.reason.as_deref(), Some("worse"));
}

#[test]
fn diff_ignores_noise_and_sees_changes() {
    let old = h100_node(8);
    assert_eq!(old.diff(&old), None);

    let mut noisy = old.clone();
    noisy.os.uptime_s += 60;
    noisy.os.load_avg.one = 7.0;
    noisy.cpu.usage_percent += 5.0;
    noisy.cpu.frequency_mhz = 3000;
    noisy.memory.available_bytes -= 1 << 30;
    noisy.network[0].rx_bytes += 1 << 20;
    noisy.gpus[3].temperature_c = Some(41);
    noisy.gpus[3].clocks.sm_mhz = Some(345);
    noisy.gpus[3].throttle_reasons = Some(vec!["gpu_idle".into()]);
    assert_eq!(noisy.diff(&old), None);

    let mut changed = noisy.clone();
    changed.gpus[5].health = GpuHealth::new(HealthState::Unhealthy, "XID 79");
    changed.nvml.status = NvmlStatus::Unresponsive;
    let delta = changed.diff(&old).unwrap();
    assert!(delta.gpus.is_some() && delta.nvml.is_some());
    assert!(delta.cpu.is_none() && delta.memory.is_none() && delta.os.is_none());
    let mut applied = old.clone();
    applied.apply(delta);
    assert_eq!(applied.gpus, changed.gpus);
    assert_eq!(applied.cpu, old.cpu);
    assert_eq!(changed.diff(&applied), None);
}

/// One random change to a report.
#[derive(Clone, Debug)]
enum Change {
    Hostname(String),
    Kernel(String),
    Uptime(u64),
    CpuUsage(f32),
    MemAvailable(u64),
    DiskAvailable(u64),
    DropDisk,
    NetRx(u64),
    NetMtu(u64),
    GpuTemp(usize, u32),
    GpuUtil(usize, u32),
    GpuPower(usize, u32),
    GpuMemUsed(usize, u64),
    GpuHealth(usize, u8),
    GpuRemapPending(usize, bool),
    GpuProcess(usize, u32),
    DropGpu,
    NvmlStatus(u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(Change::Hostname),
        "[0-9.]{1,8}".prop_map(Change::Kernel),
        any::<u64>().prop_map(Change::Uptime),
        (0.0f32..100.0).prop_map(Change::CpuUsage),
        (0u64..135_148_564_480).prop_map(Change::MemAvailable),
        (0u64..(1 << 40)).prop_map(Change::DiskAvailable),
        Just(Change::DropDisk),
        any::<u64>().prop_map(Change::NetRx),
        (1000u64..9001).prop_map(Change::NetMtu),
        (0usize..8, 20u32..95).prop_map(|(i, v)| Change::GpuTemp(i, v)),
        (0usize..8, 0u32..101).prop_map(|(i, v)| Change::GpuUtil(i, v)),
        (0usize..8, 60_000u32..700_000).prop_map(|(i, v)| Change::GpuPower(i, v)),
        (0usize..8, 0u64..85_520_809_984).prop_map(|(i, v)| Change::GpuMemUsed(i, v)),
        (0usize..8, 0u8..3).prop_map(|(i, v)| Change::GpuHealth(i, v)),
        (0usize..8, any::<bool>()).prop_map(|(i, v)| Change::GpuRemapPending(i, v)),
        (0usize..8, 1u32..100_000).prop_map(|(i, v)| Change::GpuProcess(i, v)),
        Just(Change::DropGpu),
        (0u8..4).prop_map(Change::NvmlStatus),
    ]
}

fn mutate(r: &mut HardwareReport, c: Change) {
    let gpu = |r: &mut HardwareReport, i: usize| {
        let n = r.gpus.len();
        (n > 0).then(move || i % n)
    };
    match c {
        Change::Hostname(h) => r.hostname = h,
        Change::Kernel(k) => r.os.kernel = Some(k),
        Change::Uptime(u) => r.os.uptime_s = u,
        Change::CpuUsage(u) => r.cpu.usage_percent = u,
        Change::MemAvailable(v) => r.memory.available_bytes = v,
        Change::DiskAvailable(v) => r.disks.iter_mut().for_each(|d| d.available_bytes = v),
        Change::DropDisk => {
            r.disks.pop();
        }
        Change::NetRx(v) => r.network.iter_mut().for_each(|n| n.rx_bytes = v),
        Change::NetMtu(v) => r.network.iter_mut().for_each(|n| n.mtu = v),
        Change::GpuTemp(i, v) => {
            if let Some(i) = gpu(r, i) {
                r.gpus[i].temperature_c = Some(v)
            }
        }
        Change::GpuUtil(i, v) => {
            if let Some(i) = gpu(r, i) {
                r.gpus[i].utilization_gpu_percent = Some(v)
            }
        }
        Change::GpuPower(i, v) => {
            if let Some(i) = gpu(r, i) {
                r.gpus[i].power_draw_mw = Some(v)
            }
        }
        Change::GpuMemUsed(i, v) => {
            if let Some(i) = gpu(r, i) {
                let g = &mut r.gpus[i];
                g.memory.used_bytes = Some(v);
                g.memory.free_bytes = g.memory.total_bytes.map(|t| t - v);
            }
        }
        Change::GpuHealth(i, v) => {
            if let Some(i) = gpu(r, i) {
                r.gpus[i].health = match v {
                    0 => GpuHealth::healthy(),
                    1 => GpuHealth::new(HealthState::Warning, "XID 13"),
                    _ => GpuHealth::new(HealthState::Unhealthy, "XID 79"),
                }
            }
        }
        Change::GpuRemapPending(i, v) => {
            if let Some(i) = gpu(r, i) {
                r.gpus[i]
                    .remapped_rows
                    .get_or_insert_with(Default::default)
                    .pending = v
            }
        }
        Change::GpuProcess(i, pid) => {
            if let Some(i) = gpu(r, i) {
                let procs = r.gpus[i].compute_processes.get_or_insert_with(Vec::new);
                procs.push(GpuProcess {
                    pid,
                    used_memory_bytes: Some(1 << 30),
                });
            }
        }
        Change::DropGpu => {
            r.gpus.pop();
        }
        Change::NvmlStatus(s) => {
            r.nvml.status = match s {
                0 => NvmlStatus::Ok,
                1 => NvmlStatus::Unavailable,
                2 => NvmlStatus::Unresponsive,
                _ => NvmlStatus::Fixture,
            }
        }
    }
}

proptest! {
    /// Applying `new.diff(old)` to `old` gives a report that `new` no longer differs from, and
    /// every section the delta carries arrives exactly; a chain of deltas (each sent against what
    /// the receiver holds) keeps sender and receiver in step. Deltas survive bincode and JSON.
    #[test]
    fn diff_apply_round_trip(steps in prop::collection::vec(prop::collection::vec(change(), 0..6), 1..6)) {
        let cfg = bincode::config::standard();
        let mut current = h100_node(8);
        let mut receiver = current.clone();
        for changes in steps {
            for c in changes {
                mutate(&mut current, c);
            }
            match current.diff(&receiver) {
                None => {}
                Some(delta) => {
                    let bytes = bincode::serde::encode_to_vec(&delta, cfg).unwrap();
                    let (wire, _): (HardwareDelta, usize) =
                        bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
                    let json: HardwareDelta =
                        serde_json::from_str(&serde_json::to_string(&wire).unwrap()).unwrap();
                    prop_assert_eq!(&json, &delta);
                    let carried_gpus = delta.gpus.is_some();
                    let carried_host = delta.hostname.is_some();
                    receiver.apply(json);
                    if carried_gpus {
                        prop_assert_eq!(&receiver.gpus, &current.gpus);
                    }
                    if carried_host {
                        prop_assert_eq!(&receiver.hostname, &current.hostname);
                    }
                }
            }
            prop_assert_eq!(current.diff(&receiver), None);
            // The things that must never be lost to the noise filter.
            prop_assert_eq!(&receiver.hostname, &current.hostname);
            prop_assert_eq!(&receiver.nvml, &current.nvml);
            prop_assert_eq!(receiver.gpus.len(), current.gpus.len());
            for (r, c) in receiver.gpus.iter().zip(&current.gpus) {
                prop_assert_eq!(&r.health, &c.health);
                prop_assert_eq!(&r.remapped_rows, &c.remapped_rows);
            }
            prop_assert_eq!(receiver.model(), current.model());
        }
    }
}
