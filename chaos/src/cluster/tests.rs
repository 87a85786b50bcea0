use super::*;

fn node(id: u64, ip: &str) -> Node {
    Node {
        id,
        region: REGIONS[(id - 1) as usize].into(),
        proxy: format!("{ip}:8080").parse().unwrap(),
        admin: format!("{ip}:9080").parse().unwrap(),
        peer: format!("{ip}:9443").parse().unwrap(),
        config: PathBuf::from(format!("/w/node{id}.toml")),
        data: PathBuf::from(format!("/w/data{id}")),
        log: PathBuf::from(format!("/w/node{id}.log")),
        dialer: Dialer::Here,
        child: None,
        holder: None,
    }
}

#[test]
fn a_node_dials_its_peers_through_the_relay() {
    let peers = BTreeMap::from([
        (2, "127.0.0.1:4002".parse().unwrap()),
        (3, "127.0.0.1:4003".parse().unwrap()),
    ]);
    let text = node_toml(&node(1, "127.0.0.1"), Path::new("/w/data1"), &peers);
    assert_eq!(
        text,
        "# Written by the chaos harness.\nid = 1\nregion = \"eu-west\"\ndata-dir = \"/w/data1\"\n\n\
         [listen]\nproxy = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9080\"\npeer = \"127.0.0.1:9443\"\n\n\
         [log]\naccess-log = \"off\"\nlevel = \"warn\"\n\n\
         [raft]\nheartbeat = \"150ms\"\nelection-timeout-min = \"1s\"\nelection-timeout-max = \"2s\"\n\n\
         [shutdown]\ngrace-period = \"1s\"\ndrain-delay = \"0s\"\n\n\
         # Every peer is dialled through its chaos relay link.\n[peers]\n2 = \"127.0.0.1:4002\"\n3 = \"127.0.0.1:4003\"\n"
    );
    // No additions: the text as written.
    assert_eq!(with_extra(text.clone(), None).unwrap(), text);
    assert_eq!(
        with_extra(text.clone(), Some(&toml::Table::new())).unwrap(),
        text
    );
}

#[test]
fn a_namespace_node_listens_on_its_region_address_and_dials_the_hub() {
    let peers = BTreeMap::from([(1, "10.77.0.254:40001".parse().unwrap())]);
    let text = node_toml(&node(2, "10.77.0.2"), Path::new("/w/data2"), &peers);
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["listen"]["peer"].as_str(), Some("10.77.0.2:9443"));
    assert_eq!(table["peers"]["1"].as_str(), Some("10.77.0.254:40001"));
}

#[test]
fn networks_parse_by_name() {
    assert_eq!("loopback".parse(), Ok(Network::Loopback));
    assert_eq!("namespaces".parse(), Ok(Network::Namespaces));
    let error = "netns".parse::<Network>().unwrap_err();
    assert!(error.contains("loopback, namespaces"), "{error}");
}

#[test]
fn additions_merge_table_by_table() {
    let text = node_toml(
        &node(1, "127.0.0.1"),
        Path::new("/w/data1"),
        &BTreeMap::new(),
    );
    let extra: toml::Table = "[raft]\nleader-loss = \"3s\"\n[log]\nlevel = \"info\"\n\
                              [gslb]\ninterval = \"100ms\"\n[regions.eu-west]\naddresses = [\"10.77.0.1\"]\n"
        .parse()
        .unwrap();
    let merged = with_extra(text, Some(&extra)).unwrap();
    let table: toml::Table = merged.parse().unwrap();
    assert_eq!(table["id"].as_integer(), Some(1));
    assert_eq!(table["raft"]["leader-loss"].as_str(), Some("3s"));
    assert_eq!(table["raft"]["heartbeat"].as_str(), Some(HEARTBEAT));
    assert_eq!(table["log"]["level"].as_str(), Some("info"));
    assert_eq!(table["log"]["access-log"].as_str(), Some("off"));
    assert_eq!(table["gslb"]["interval"].as_str(), Some("100ms"));
    assert_eq!(
        table["regions"]["eu-west"]["addresses"][0].as_str(),
        Some("10.77.0.1")
    );
}
