use shared::http::{serve, Endpoint};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    serve(&[
        Endpoint::ListProducts,
        Endpoint::GetProduct,
        Endpoint::UpdateProduct,
        Endpoint::AdjustInventory,
        Endpoint::ListStockMovements,
    ])
    .await
}
