use shared::http::{serve, Endpoint};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    serve(&[Endpoint::UpdateOrderStatus]).await
}
