use std::sync::Arc;
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    let settings = _core::service::Settings::from_millis(100, 100, 500, "always", None, 5000, 2000).unwrap();
    let service = _core::service::Service::new(settings, move || handle.clone());
    service.add_ping("ping".to_owned()).unwrap();
    let port: u16 = std::env::args().nth(1).unwrap().parse().unwrap();
    let log = std::env::var("LOG").is_ok();
    let a = _core::probe::start(Arc::clone(&service), format!("127.0.0.1:{port}").parse().unwrap(), log).unwrap();
    eprintln!("listening {a}");
    std::thread::sleep(std::time::Duration::from_secs(3600));
}
